//! A namespace with more than the shim reads is refused, naming the bound.

use super::super::scan::{MAX_ADDRESSES, MAX_INTERFACES, MAX_LINKS, MAX_ROUTES};
use super::*;

/// Asserts that setup in `pod` fails on the bound `max` of `what`.
fn assert_bound(pod: &TestNs, what: &str, max: usize) {
    let err = PodNetwork::setup(&pod.path()).expect_err(what);
    assert!(matches!(err, NetworkError::TooMany { .. }), "{err}");
    let text = err.to_string();
    assert!(text.contains(&format!("more than {max} {what}")), "{text}");
    assert!(pod.link_gone("tap0_runv"));
}

#[test]
fn more_interfaces_than_the_bound_are_refused() {
    let pod = TestNs::new();
    let batch: String = (0..=MAX_INTERFACES)
        .map(|i| {
            format!(
                "link add eth{i} type veth peer name peer{i}\naddr add 10.97.{i}.2/24 dev eth{i}\n"
            )
        })
        .collect();
    pod.ip_batch(&batch);
    assert_bound(&pod, "interfaces", MAX_INTERFACES);
}

#[test]
fn more_addresses_than_the_bound_are_refused() {
    let pod = TestNs::new();
    let mut batch = String::from("link add eth0 type veth peer name peer0\n");
    for i in 0..=MAX_ADDRESSES {
        batch += &format!("addr add 10.96.0.{}/24 dev eth0\n", i + 2);
    }
    pod.ip_batch(&batch);
    assert_bound(&pod, "global addresses on eth0", MAX_ADDRESSES);
}

#[test]
fn more_routes_than_the_bound_are_refused() {
    let pod = TestNs::new();
    let mut batch = String::from(
        "link add eth0 type veth peer name peer0\naddr add 10.95.0.2/16 dev eth0\nlink set eth0 up\n",
    );
    for i in 0..=MAX_ROUTES {
        batch += &format!(
            "route add 10.{}.{}.0/24 via 10.95.0.1\n",
            100 + i / 256,
            i % 256
        );
    }
    pod.ip_batch(&batch);
    assert_bound(&pod, "routes", MAX_ROUTES);
}

#[test]
fn more_links_than_the_bound_are_refused() {
    let pod = TestNs::new();
    let batch: String = (0..MAX_LINKS / 2 + 1)
        .map(|i| format!("link add v{i} type veth peer name w{i}\n"))
        .collect();
    pod.ip_batch(&batch);
    assert_bound(&pod, "links", MAX_LINKS);
}

#[test]
fn the_namespace_thread_leaves_the_callers_namespace_alone() {
    let pod = TestNs::new();
    let before = current_netns();
    let ns = match netns::Netns::open(&pod.path()).expect("open") {
        netns::Opened::Pod(ns) => ns,
        netns::Opened::Missing => panic!("the test netns is missing"),
    };
    let inside = ns.run(|| Ok(current_netns())).expect("run");
    assert_ne!(inside, before);
    assert_eq!(current_netns(), before);
    let fresh = std::thread::spawn(current_netns).join().expect("thread");
    assert_eq!(fresh, before);
}
