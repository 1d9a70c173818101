use super::*;

fn ask(request: &[u8]) -> Option<Response> {
    answer(&mut &request[..], || Ok::<_, String>("m 1\n".into())).unwrap()
}

#[test]
fn answers_a_get_of_metrics_with_the_scrape() {
    let response = ask(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    assert_eq!(response.status, "200 OK");
    assert_eq!(response.body, "m 1\n");
    let bytes = String::from_utf8(response.to_bytes()).unwrap();
    assert!(bytes.starts_with("HTTP/1.1 200 OK\r\n"), "{bytes}");
    assert!(bytes.contains("Content-Length: 4\r\n"), "{bytes}");
    assert!(bytes.ends_with("\r\n\r\nm 1\n"), "{bytes}");
    assert_eq!(
        ask(b"GET /metrics?x=1 HTTP/1.0\r\n\r\n").unwrap().status,
        "200 OK"
    );
}

#[test]
fn refuses_other_paths_methods_and_oversize_requests() {
    let status = |request: &[u8]| ask(request).unwrap().status;
    assert_eq!(status(b"GET / HTTP/1.1\r\n\r\n"), "404 Not Found");
    assert_eq!(status(b"GET /metricsx HTTP/1.1\r\n\r\n"), "404 Not Found");
    assert_eq!(
        status(b"POST /metrics HTTP/1.1\r\n\r\n"),
        "405 Method Not Allowed"
    );
    assert_eq!(status(b"GET /metrics\r\n\r\n"), "400 Bad Request");
    assert_eq!(status(b"\xff\xfe\r\n\r\n"), "400 Bad Request");
    let mut big = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
    big.resize(MAX_REQUEST + 2048, b'a');
    assert_eq!(status(&big), "431 Request Header Fields Too Large");
    // Whole, but past the bound.
    big.truncate(MAX_REQUEST + 100);
    big.extend_from_slice(b"\r\n\r\n");
    assert_eq!(status(&big), "431 Request Header Fields Too Large");
    let mut fits = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
    fits.resize(MAX_REQUEST - 4, b'a');
    fits.extend_from_slice(b"\r\n\r\n");
    assert_eq!(status(&fits), "200 OK");
    assert_eq!(ask(b""), None);
}

#[test]
fn a_failed_scrape_is_a_server_error() {
    let response = answer(&mut &b"GET /metrics HTTP/1.1\r\n\r\n"[..], || {
        Err::<String, _>("no run root")
    })
    .unwrap()
    .unwrap();
    assert_eq!(response.status, "500 Internal Server Error");
}

#[test]
fn serves_over_tcp_and_times_out_a_silent_client() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        for stream in listener.incoming().take(2) {
            let _ = serve_one(stream.unwrap(), &mut || Ok::<_, String>("m 1\n".into()));
        }
    });
    let silent = TcpStream::connect(addr).unwrap();
    let mut client = TcpStream::connect(addr).unwrap();
    client.write_all(b"GET /nope HTTP/1.1\r\n\r\n").unwrap();
    let mut reply = String::new();
    client.read_to_string(&mut reply).unwrap();
    assert!(reply.starts_with("HTTP/1.1 404 Not Found\r\n"), "{reply}");
    drop(silent);
    server.join().unwrap();
}
