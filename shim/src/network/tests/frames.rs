//! Frames through a tap joined to a veth, both ways.

use super::*;

/// An ethertype for local experiments (IEEE 802): nothing else sends it.
const TEST_ETHERTYPE: u16 = 0x88b5;
/// How long a test frame may take to arrive.
const FRAME_TIMEOUT: Duration = Duration::from_secs(5);

fn packet_socket(name: &str) -> (OwnedFd, i32) {
    let protocol = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: socket() takes no pointers; the result is checked.
    let raw = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            i32::from(protocol),
        )
    };
    assert!(
        raw >= 0,
        "AF_PACKET socket: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: `raw` is a new descriptor nothing else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(raw) };
    let index = i32::try_from(tap::index_of(name).expect("ifindex")).expect("ifindex range");
    // SAFETY: sockaddr_ll is plain old data; all-zero is valid.
    let mut address: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    address.sll_family = libc::AF_PACKET as u16;
    address.sll_protocol = protocol;
    address.sll_ifindex = index;
    // SAFETY: bind reads one sockaddr_ll of the length given, which outlives the call.
    let bound = unsafe {
        libc::bind(
            socket.as_raw_fd(),
            std::ptr::addr_of!(address).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    assert_eq!(bound, 0, "bind: {}", std::io::Error::last_os_error());
    (socket, index)
}

/// An Ethernet frame of [`TEST_ETHERTYPE`] carrying `marker`.
fn frame(dst: [u8; 6], src: [u8; 6], marker: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(64);
    frame.extend_from_slice(&dst);
    frame.extend_from_slice(&src);
    frame.extend_from_slice(&TEST_ETHERTYPE.to_be_bytes());
    frame.extend_from_slice(marker);
    frame.resize(64, 0);
    frame
}

fn carries(frame: &[u8], marker: &[u8]) -> bool {
    frame.len() >= 14 + marker.len()
        && frame[12..14] == TEST_ETHERTYPE.to_be_bytes()
        && &frame[14..14 + marker.len()] == marker
}

fn parse_mac(text: &str) -> [u8; 6] {
    protocol::mac::parse_mac(text).expect("the kernel's MAC")
}

/// Waits until `fd` is readable; false after `timeout`.
fn readable(fd: BorrowedFd<'_>, timeout: Duration) -> bool {
    let mut pollfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let millis = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: poll reads and writes one pollfd, which outlives the call.
    unsafe { libc::poll(&mut pollfd, 1, millis) > 0 }
}

/// Reads frames from `fd` until one carries `marker`; the frame (after
/// `skip` bytes of header).
fn receive(fd: BorrowedFd<'_>, skip: usize, marker: &[u8]) -> Vec<u8> {
    let deadline = Instant::now() + FRAME_TIMEOUT;
    let mut buffer = vec![0u8; 65536];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            readable(fd, left),
            "no frame carrying {:?} within {FRAME_TIMEOUT:?}",
            String::from_utf8_lossy(marker)
        );
        // SAFETY: read writes at most buffer.len() bytes into buffer.
        let n = unsafe { libc::read(fd.as_raw_fd(), buffer.as_mut_ptr().cast(), buffer.len()) };
        assert!(n >= 0, "read: {}", std::io::Error::last_os_error());
        let got = &buffer[..n as usize];
        if got.len() > skip && carries(&got[skip..], marker) {
            return got[skip..].to_vec();
        }
    }
}

#[test]
fn a_veth_is_joined_to_a_tap_and_frames_flow_both_ways() {
    let Pod { pod, bridge } = pod_with_veth();
    let veth_mac = pod.link("eth0")["address"]
        .as_str()
        .expect("mac")
        .to_string();
    let before = current_netns();

    let network = PodNetwork::setup(&pod.path()).expect("setup");
    assert_eq!(current_netns(), before, "setup moved the caller's thread");

    // What the guest gets.
    assert_eq!(network.interfaces.len(), 1);
    let card = &network.interfaces[0];
    assert_eq!(
        (card.veth.as_str(), card.tap_name.as_str()),
        ("eth0", "tap0_runv")
    );
    assert_eq!(card.mac, veth_mac);
    assert_eq!(card.interface.name, "eth0");
    assert_eq!(card.interface.hw_addr, veth_mac);
    assert_eq!(card.interface.mtu, 1400);
    let addresses: Vec<(String, u32)> = card
        .interface
        .addresses
        .iter()
        .map(|a| (a.address.clone(), a.prefix_len))
        .collect();
    assert_eq!(
        addresses,
        [
            ("10.99.0.2".to_string(), 24),
            ("fd00:99::2".to_string(), 64)
        ]
    );
    let mut routes: Vec<_> = network.routes.iter().map(route_key).collect();
    routes.sort();
    let route = |dest: &str, gateway: &str| {
        (
            dest.to_string(),
            gateway.to_string(),
            "eth0".to_string(),
            String::new(),
            0,
        )
    };
    assert_eq!(
        routes,
        [
            route("", "10.99.0.1"),
            route("", "fd00:99::1"),
            route("10.100.0.0/16", "10.99.0.1")
        ]
    );

    // The tap and the redirects, as `ip` and `tc` see them.
    let tap_link = pod.link("tap0_runv");
    assert_eq!(tap_link["mtu"], 1400);
    assert!(tap_link["flags"]
        .as_array()
        .expect("flags")
        .contains(&"UP".into()));
    assert!(pod.qdiscs("eth0").contains(&"ingress".to_string()));
    assert!(pod.qdiscs("tap0_runv").contains(&"ingress".to_string()));
    let cookie: String = tc::COOKIE.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(
        redirect_of(&pod, "eth0"),
        Some(("tap0_runv".into(), cookie.clone()))
    );
    assert_eq!(
        redirect_of(&pod, "tap0_runv"),
        Some(("eth0".into(), cookie))
    );

    // A second setup while the first holds the tap fails and breaks nothing.
    let err = PodNetwork::setup(&pod.path()).expect_err("second setup");
    assert!(err.to_string().contains("tap0_runv"), "{err}");
    assert!(pod.has_link("tap0_runv"));
    assert!(redirect_of(&pod, "eth0").is_some());

    // Guest → bridge: a frame written to the tap leaves by the veth.
    let bridge_mac = parse_mac(bridge.link("vbr0")["address"].as_str().expect("mac"));
    let guest_mac = parse_mac(&veth_mac);
    bridge.enter(|| {
        let (socket, _) = packet_socket("vbr0");
        let mut written = vec![0u8; tap::VNET_HDR_LEN as usize];
        written.extend(frame(bridge_mac, guest_mac, b"runv-to-bridge"));
        let mut tap = File::from(card.tap.try_clone().expect("dup the tap"));
        tap.write_all(&written).expect("write to the tap");
        let got = receive(socket.as_fd(), 0, b"runv-to-bridge");
        assert_eq!(&got[..12], [bridge_mac, guest_mac].concat());

        // Bridge → guest: a frame sent on the far end comes out of the tap.
        let sent = frame(guest_mac, bridge_mac, b"runv-to-guest");
        // SAFETY: send reads sent.len() bytes from sent.
        let n = unsafe { libc::send(socket.as_raw_fd(), sent.as_ptr().cast(), sent.len(), 0) };
        assert_eq!(
            n,
            sent.len() as isize,
            "send: {}",
            std::io::Error::last_os_error()
        );
    });
    let hdr = tap::VNET_HDR_LEN as usize;
    let got = receive(card.tap.as_fd(), hdr, b"runv-to-guest");
    assert_eq!(&got[..12], [guest_mac, bridge_mac].concat());

    // Teardown removes our qdisc and the tap, even while its fd is open.
    teardown(&pod.path()).expect("teardown");
    assert!(!pod.qdiscs("eth0").contains(&"ingress".to_string()));
    assert!(pod.link_gone("tap0_runv"));
    teardown(&pod.path()).expect("teardown again");
    drop(network);
}
