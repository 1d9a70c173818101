use super::*;

/// A protobuf varint.
fn varint(mut value: u64) -> Vec<u8> {
    let mut bytes = Vec::new();
    while value >= 0x80 {
        bytes.push((value as u8) | 0x80);
        value >>= 7;
    }
    bytes.push(value as u8);
    bytes
}

/// Field `number` of wire type 2 (length-delimited) holding `payload`.
fn len_field(number: u32, payload: &[u8]) -> Vec<u8> {
    let mut bytes = varint(u64::from(number << 3 | WIRE_LEN));
    bytes.extend(varint(payload.len() as u64));
    bytes.extend_from_slice(payload);
    bytes
}

/// Field `number` of wire type 0 (varint); an int32 is sign-extended to
/// 64 bits, so a negative one takes ten bytes.
fn int32_field(number: u32, value: i32) -> Vec<u8> {
    let mut bytes = varint(u64::from(number << 3 | WIRE_VARINT));
    bytes.extend(varint(i64::from(value) as u64));
    bytes
}

/// A `runtimeoptions.v1.Options` Any naming `config_path` (its field 2),
/// as CRI and ctr build it: `type_url` (Any field 1), `value` (field 2).
fn runv_options(type_url: &str, config_path: &str) -> Vec<u8> {
    let options = len_field(2, config_path.as_bytes());
    [len_field(1, type_url.as_bytes()), len_field(2, &options)].concat()
}

/// BootstrapParams as containerd 2.3.4's `pkg/shim.Command` writes them
/// for `ctr run --runtime io.pouch.runv.v2 --runtime-config-path ...`,
/// field by field (log level INFO, the proto3 default, is left out).
fn containerd_2_3_params(log_level: Option<i32>) -> Vec<u8> {
    let mut bytes = Vec::new();
    bytes.extend(len_field(1, b"demo")); // instance_id
    bytes.extend(len_field(2, b"default")); // namespace
    if let Some(level) = log_level {
        bytes.extend(int32_field(3, level)); // log_level
    }
    bytes.extend(len_field(4, b"2.3.4")); // containerd_version
    bytes.extend(len_field(5, b"/run/containerd/containerd.sock.ttrpc")); // ttrpc address
    bytes.extend(len_field(6, b"/run/containerd/containerd.sock")); // grpc address
    bytes.extend(len_field(7, b"/usr/local/bin/containerd")); // containerd_binary
    let any = runv_options("runtimeoptions.v1.Options", "/etc/runv/ci.toml");
    bytes.extend(len_field(8, &len_field(1, &any))); // extensions[0].value
    bytes.extend(len_field(9, b"/run/containerd/s")); // socket_dir
    bytes
}

const ADDRESS: &str = "unix:///run/containerd/s/0123abcd";

/// The BootstrapResult runv answers 2.3+ with, byte by byte.
fn expected_result() -> Vec<u8> {
    let mut bytes = vec![0x08, 0x03]; // version (field 1, varint) = 3
    bytes.extend([0x12, ADDRESS.len() as u8]); // address (field 2, length)
    bytes.extend_from_slice(ADDRESS.as_bytes());
    bytes.extend([0x1a, 0x05]); // protocol (field 3, length 5)
    bytes.extend_from_slice(b"ttrpc");
    bytes
}

#[test]
fn containerd_2_3_gets_a_bootstrap_result() {
    let input = StartInput::parse(&containerd_2_3_params(None), "demo", "default");
    let StartInput::Bootstrap(params) = &input else {
        panic!("not read as BootstrapParams: {input:?}");
    };
    assert_eq!(params.containerd_version, "2.3.4");
    assert_eq!(
        params.ttrpc_address,
        "/run/containerd/containerd.sock.ttrpc"
    );
    assert_eq!(params.grpc_address, "/run/containerd/containerd.sock");
    assert_eq!(params.containerd_binary, "/usr/local/bin/containerd");
    assert_eq!(params.socket_dir.as_deref(), Some("/run/containerd/s"));
    assert_eq!(params.log_level, 0);
    assert_eq!(
        input.config_path().unwrap(),
        Some(PathBuf::from("/etc/runv/ci.toml"))
    );
    assert_eq!(input.answer(ADDRESS).unwrap(), expected_result());
}

#[test]
fn debug_level_unknown_fields_and_other_extensions_are_read() {
    let mut bytes = containerd_2_3_params(Some(-4)); // LOG_LEVEL_DEBUG
    let cri = [
        len_field(1, b"containerd.io/cri.v1.PodSandboxConfig"),
        len_field(2, b"x"),
    ]
    .concat();
    bytes.extend(len_field(8, &len_field(1, &cri))); // an extension runv ignores
    bytes.extend(len_field(42, b"from a later containerd")); // unknown field
    let input = StartInput::parse(&bytes, "demo", "default");
    let StartInput::Bootstrap(params) = &input else {
        panic!("not read as BootstrapParams: {input:?}");
    };
    assert_eq!(params.log_level, -4);
    assert_eq!(params.extensions.len(), 2);
    assert_eq!(
        input.config_path().unwrap(),
        Some(PathBuf::from("/etc/runv/ci.toml"))
    );
    assert_eq!(input.answer(ADDRESS).unwrap(), expected_result());
}

#[test]
fn containerd_1_x_gets_the_plain_address() {
    // containerd 1.6/1.7 (and 2.x without runtime options): stdin empty.
    let input = StartInput::parse(b"", "demo", "default");
    assert_eq!(input, StartInput::Legacy(None));
    assert_eq!(input.config_path().unwrap(), None);
    assert_eq!(input.answer(ADDRESS).unwrap(), ADDRESS.as_bytes());
}

#[test]
fn bare_runtime_options_are_the_legacy_protocol() {
    // containerd 1.6 to 2.2 with runtime options: the bare Any, which also
    // decodes as BootstrapParams (its type URL as the id).
    let bytes = runv_options(
        "types.containerd.io/runtimeoptions.v1.Options",
        "/etc/runv/a.toml",
    );
    let input = StartInput::parse(&bytes, "demo", "default");
    assert!(matches!(input, StartInput::Legacy(Some(_))), "{input:?}");
    assert_eq!(
        input.config_path().unwrap(),
        Some(PathBuf::from("/etc/runv/a.toml"))
    );
    assert_eq!(input.answer(ADDRESS).unwrap(), ADDRESS.as_bytes());
}

#[test]
fn params_for_another_instance_or_junk_are_legacy() {
    let params = containerd_2_3_params(None);
    assert!(matches!(
        StartInput::parse(&params, "other", "default"),
        StartInput::Legacy(_)
    ));
    assert!(matches!(
        StartInput::parse(&params, "demo", "k8s.io"),
        StartInput::Legacy(_)
    ));
    for junk in [&b"\xff\xff"[..], b"hello", &params[..params.len() - 3]] {
        let input = StartInput::parse(junk, "demo", "default");
        assert!(matches!(input, StartInput::Legacy(_)), "{junk:?}");
        assert_eq!(input.answer(ADDRESS).unwrap(), ADDRESS.as_bytes());
    }
}

#[test]
fn a_malformed_runv_options_extension_fails_start() {
    let any = [
        len_field(1, b"runtimeoptions.v1.Options"),
        len_field(2, b"\x12\x40a"),
    ]
    .concat();
    let bytes = [
        len_field(1, b"demo"),
        len_field(2, b"default"),
        len_field(8, &len_field(1, &any)),
    ]
    .concat();
    let input = StartInput::parse(&bytes, "demo", "default");
    assert!(matches!(input, StartInput::Bootstrap(_)));
    assert!(input.config_path().is_err());
}
