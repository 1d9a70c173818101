//! The virtio-blk configuration space: `struct virtio_blk_config` (virtio 1.1,
//! 5.2.4), little-endian, the fields in the spec's order and at its offsets.

/// Bytes of the configuration space, up to `write_zeroes_may_unmap` and its
/// padding; the driver reads zeroes past it.
pub const CONFIG_LEN: usize = 60;

/// `struct virtio_blk_geometry`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Geometry {
    /// Cylinders.
    pub cylinders: u16,
    /// Heads.
    pub heads: u8,
    /// Sectors per track.
    pub sectors: u8,
}

/// `struct virtio_blk_topology`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Topology {
    /// Logical blocks per physical block, as a power of two.
    pub physical_block_exp: u8,
    /// Offset of the first aligned logical block.
    pub alignment_offset: u8,
    /// Suggested minimum I/O size, in blocks.
    pub min_io_size: u16,
    /// Optimal (suggested maximum) I/O size, in blocks.
    pub opt_io_size: u32,
}

/// `struct virtio_blk_config`; a field counts for the driver only if the
/// feature that goes with it is offered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BlockConfig {
    /// Size of the disk in 512-byte sectors (always valid).
    pub capacity: u64,
    /// Largest data buffer (`VIRTIO_BLK_F_SIZE_MAX`).
    pub size_max: u32,
    /// Most data buffers in one request (`VIRTIO_BLK_F_SEG_MAX`).
    pub seg_max: u32,
    /// Disk geometry (`VIRTIO_BLK_F_GEOMETRY`).
    pub geometry: Geometry,
    /// Logical block size in bytes (`VIRTIO_BLK_F_BLK_SIZE`).
    pub blk_size: u32,
    /// I/O topology (`VIRTIO_BLK_F_TOPOLOGY`).
    pub topology: Topology,
    /// Write-back cache mode (`VIRTIO_BLK_F_CONFIG_WCE`).
    pub writeback: u8,
    /// Request queues (`VIRTIO_BLK_F_MQ`).
    pub num_queues: u16,
    /// Most sectors in one discard segment (`VIRTIO_BLK_F_DISCARD`).
    pub max_discard_sectors: u32,
    /// Most segments in one discard request.
    pub max_discard_seg: u32,
    /// Alignment the driver should give discard segments, in sectors.
    pub discard_sector_alignment: u32,
    /// Most sectors in one write-zeroes segment (`VIRTIO_BLK_F_WRITE_ZEROES`).
    pub max_write_zeroes_sectors: u32,
    /// Most segments in one write-zeroes request.
    pub max_write_zeroes_seg: u32,
    /// 1 if a write-zeroes request with the unmap flag may deallocate sectors.
    pub write_zeroes_may_unmap: u8,
}

/// Lays out little-endian fields one after the other.
struct LeWriter {
    bytes: [u8; CONFIG_LEN],
    at: usize,
}

impl LeWriter {
    fn put(&mut self, field: &[u8]) {
        let end = self.at + field.len();
        if let Some(slot) = self.bytes.get_mut(self.at..end) {
            slot.copy_from_slice(field);
        }
        self.at = end;
    }
}

impl BlockConfig {
    /// The configuration space as the driver reads it.
    pub fn to_bytes(self) -> [u8; CONFIG_LEN] {
        let mut out = LeWriter {
            bytes: [0; CONFIG_LEN],
            at: 0,
        };
        out.put(&self.capacity.to_le_bytes()); // 0
        out.put(&self.size_max.to_le_bytes()); // 8
        out.put(&self.seg_max.to_le_bytes()); // 12
        out.put(&self.geometry.cylinders.to_le_bytes()); // 16
        out.put(&[self.geometry.heads, self.geometry.sectors]); // 18
        out.put(&self.blk_size.to_le_bytes()); // 20
        out.put(&[
            self.topology.physical_block_exp,
            self.topology.alignment_offset,
        ]); // 24
        out.put(&self.topology.min_io_size.to_le_bytes()); // 26
        out.put(&self.topology.opt_io_size.to_le_bytes()); // 28
        out.put(&[self.writeback, 0]); // 32, then unused0
        out.put(&self.num_queues.to_le_bytes()); // 34
        out.put(&self.max_discard_sectors.to_le_bytes()); // 36
        out.put(&self.max_discard_seg.to_le_bytes()); // 40
        out.put(&self.discard_sector_alignment.to_le_bytes()); // 44
        out.put(&self.max_write_zeroes_sectors.to_le_bytes()); // 48
        out.put(&self.max_write_zeroes_seg.to_le_bytes()); // 52
        out.put(&[self.write_zeroes_may_unmap, 0, 0, 0]); // 56, then unused1
        debug_assert_eq!(out.at, CONFIG_LEN);
        out.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u32_at(bytes: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap())
    }

    #[test]
    fn fields_sit_at_the_offsets_of_the_spec() {
        let bytes = BlockConfig {
            capacity: 0x0102_0304_0506_0708,
            size_max: 1,
            seg_max: 2,
            geometry: Geometry {
                cylinders: 3,
                heads: 4,
                sectors: 5,
            },
            blk_size: 6,
            topology: Topology {
                physical_block_exp: 7,
                alignment_offset: 8,
                min_io_size: 9,
                opt_io_size: 10,
            },
            writeback: 11,
            num_queues: 12,
            max_discard_sectors: 13,
            max_discard_seg: 14,
            discard_sector_alignment: 15,
            max_write_zeroes_sectors: 16,
            max_write_zeroes_seg: 17,
            write_zeroes_may_unmap: 18,
        }
        .to_bytes();
        assert_eq!(bytes[..8], 0x0102_0304_0506_0708u64.to_le_bytes());
        assert_eq!(u32_at(&bytes, 8), 1);
        assert_eq!(u32_at(&bytes, 12), 2);
        assert_eq!(bytes[16..20], [3, 0, 4, 5]);
        assert_eq!(u32_at(&bytes, 20), 6);
        assert_eq!(bytes[24..28], [7, 8, 9, 0]);
        assert_eq!(u32_at(&bytes, 28), 10);
        assert_eq!(bytes[32..36], [11, 0, 12, 0]);
        for (at, value) in [(36, 13), (40, 14), (44, 15), (48, 16), (52, 17)] {
            assert_eq!(u32_at(&bytes, at), value, "offset {at}");
        }
        assert_eq!(bytes[56..], [18, 0, 0, 0]);
    }
}
