//! The device flags' values (`--disk`, `--vsock`, `--fs`, `--net`) into
//! their typed configs; their ranges are checked with the whole VM's.

use super::options::{OptionError, Options};
use crate::config::{DiskConfig, FsCache, FsConfig, NetConfig, VsockConfig};
use std::path::Path;

/// `--disk`'s grammar.
pub const DISK: &str = "path=FILE[,readonly][,id=S]";
/// `--vsock`'s grammar.
pub const VSOCK: &str = "cid=N,uds=PATH";
/// `--fs`'s grammar.
pub const FS: &str = "tag=T,path=DIR[,cache=never|auto|always][,privileged][,max-fds=N]";
/// `--net`'s grammar.
pub const NET: &str = "[tap=NAME|fd=N][,mac=M]";

/// `--disk path=FILE[,readonly][,id=S]`.
pub fn disk(value: &str) -> Result<DiskConfig, OptionError> {
    let mut options = Options::new("--disk", DISK, value);
    let path = options.value("path");
    let readonly = options.switch("readonly");
    let id = options.value("id");
    options.check_unknown()?;
    Ok(DiskConfig {
        path: options.required("path", path)?.into(),
        readonly,
        id: id.map(str::to_owned),
    })
}

/// `--vsock cid=N,uds=PATH`.
pub fn vsock(value: &str) -> Result<VsockConfig, OptionError> {
    let mut options = Options::new("--vsock", VSOCK, value);
    let cid = options.value("cid");
    let uds = options.value("uds");
    options.check_unknown()?;
    Ok(VsockConfig {
        cid: options
            .number("cid", cid)?
            .ok_or_else(|| options.missing("cid"))?,
        uds: options.required("uds", uds)?.into(),
    })
}

/// `--fs tag=T,path=DIR[,cache=never|auto|always][,privileged][,max-fds=N]`.
pub fn fs(value: &str) -> Result<FsConfig, OptionError> {
    let mut options = Options::new("--fs", FS, value);
    let tag = options.value("tag");
    let path = options.value("path");
    let cache = options.value("cache");
    let privileged = options.switch("privileged");
    let max_fds = options.value("max-fds");
    options.check_unknown()?;
    let tag = tag.ok_or_else(|| options.missing("tag"))?;
    let mut share = FsConfig::new(tag, Path::new(options.required("path", path)?));
    let caches = [
        ("never", FsCache::Never),
        ("auto", FsCache::Auto),
        ("always", FsCache::Always),
    ];
    if let Some(cache) = options.choice("cache", cache, &caches)? {
        share.cache = cache;
    }
    share.privileged = privileged;
    if let Some(max_fds) = options.number("max-fds", max_fds)? {
        share.max_fds = max_fds;
    }
    Ok(share)
}

/// `--net [tap=NAME|fd=N][,mac=M]`.
pub fn net(value: &str) -> Result<NetConfig, OptionError> {
    let mut options = Options::new("--net", NET, value);
    let tap = options.value("tap");
    let fd = options.value("fd");
    let mac = options.value("mac");
    options.check_unknown()?;
    Ok(NetConfig {
        tap: tap.map(str::to_owned),
        fd: options.number("fd", fd)?,
        mac: mac.map(str::to_owned),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DEFAULT_FS_MAX_FDS;

    #[test]
    fn disk_options_parse_and_bad_ones_are_named() {
        let parsed = disk("path=/img,readonly,id=root").unwrap();
        assert_eq!(
            parsed,
            DiskConfig {
                path: "/img".into(),
                readonly: true,
                id: Some("root".into())
            }
        );
        assert!(disk("readonly")
            .unwrap_err()
            .to_string()
            .contains("no path"));
        let err = disk("path=/i,rw").unwrap_err().to_string();
        assert!(err.contains("unknown option 'rw'"), "{err}");
    }

    #[test]
    fn vsock_options_parse_and_bad_ones_are_named() {
        let parsed = vsock("cid=3,uds=/v.sock").unwrap();
        assert_eq!((parsed.cid, parsed.uds.to_str()), (3, Some("/v.sock")));
        let err = |value: &str| vsock(value).unwrap_err().to_string();
        assert!(err("uds=/v").contains("no cid"));
        assert!(err("cid=3").contains("no uds"));
        assert!(err("cid=x,uds=/v").contains("cid 'x' is not a whole number"));
    }

    #[test]
    fn fs_options_parse_and_bad_ones_are_named() {
        let parsed = fs("tag=runv,path=/srv,cache=never").unwrap();
        assert_eq!(
            parsed,
            FsConfig {
                tag: "runv".into(),
                path: "/srv".into(),
                cache: FsCache::Never,
                privileged: false,
                max_fds: DEFAULT_FS_MAX_FDS,
            }
        );
        let parsed = fs("privileged,tag=t,path=/srv,max-fds=128").unwrap();
        assert_eq!((parsed.privileged, parsed.max_fds), (true, 128));
        let err = |value: &str| fs(value).unwrap_err().to_string();
        assert!(err("path=/srv").contains("no tag"));
        assert!(err("tag=t").starts_with("--fs tag=t: no path"));
        assert!(err("tag=t,path=/srv,cache=sometimes").contains("unknown cache 'sometimes'"));
        assert!(err("tag=t,path=/srv,ro").contains("unknown option 'ro'"));
        assert!(err("tag=t,path=/srv,privileged=yes").contains("unknown option 'privileged=yes'"));
        assert!(err("tag=t,path=/srv,max-fds=many").contains("max-fds 'many'"));
    }

    #[test]
    fn net_options_parse_and_bad_ones_are_named() {
        let parsed = net("tap=runvtap0,mac=02:00:0a:d5:00:02").unwrap();
        assert_eq!(parsed.tap.as_deref(), Some("runvtap0"));
        assert_eq!(parsed.mac_bytes(), Some([2, 0, 0x0a, 0xd5, 0, 2]));
        let parsed = net("fd=7").unwrap();
        assert_eq!((parsed.fd, parsed.mac), (Some(7), None));
        let err = |value: &str| net(value).unwrap_err().to_string();
        assert!(err("fd=x").contains("not a whole number"));
        assert!(err("tap=t,queues=2").contains("unknown option 'queues=2'"));
    }
}
