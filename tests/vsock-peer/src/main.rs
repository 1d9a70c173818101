//! `vsock-peer serve PORT`: the guest end of the vsock suite. Each connection
//! starts with one command line:
//!
//! - `sink`: read to end of file, answer the SHA-256 of what came;
//! - `send N`: send N pattern bytes, then close;
//! - `echo`: send back everything until end of file;
//! - `dial PORT N`: connect to the host (CID 2) on PORT, send N pattern bytes,
//!   half-close, and answer `sent <what the host replied>` or `refused <error>`;
//! - `exit`: end the process (the init script then reboots).

use protocol::vsock;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use vsock_peer::{fill_pattern, Digester};

fn send_pattern(stream: &mut UnixStream, len: u64) -> io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut offset = 0;
    while offset < len {
        let n = (len - offset).min(buf.len() as u64) as usize;
        fill_pattern(&mut buf[..n], offset);
        stream.write_all(&buf[..n])?;
        offset += n as u64;
    }
    Ok(())
}

fn number(word: Option<&str>) -> io::Result<u64> {
    word.and_then(|w| w.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "expected a number"))
}

fn serve(stream: UnixStream) -> io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut words = line.split_whitespace();
    let mut out = stream;
    match words.next() {
        Some("sink") => {
            let mut digest = Digester::default();
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = reader.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                digest.update(&buf[..n]);
            }
            writeln!(out, "{}", digest.hex())
        }
        Some("send") => send_pattern(&mut out, number(words.next())?),
        Some("echo") => {
            io::copy(&mut reader, &mut out)?;
            Ok(())
        }
        Some("dial") => {
            let port = number(words.next())? as u32;
            let len = number(words.next())?;
            match vsock::connect(vsock::HOST_CID, port) {
                Ok(mut host) => {
                    send_pattern(&mut host, len)?;
                    host.shutdown(std::net::Shutdown::Write)?;
                    let mut reply = String::new();
                    host.read_to_string(&mut reply)?;
                    writeln!(out, "sent {}", reply.trim())
                }
                Err(err) => writeln!(out, "refused {err}"),
            }
        }
        Some("exit") => std::process::exit(0),
        _ => writeln!(out, "unknown command {line:?}"),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let port = match args.as_slice() {
        [_, serve, port] if serve == "serve" => port.parse::<u32>().ok(),
        _ => None,
    };
    let Some(port) = port else {
        eprintln!("usage: vsock-peer serve PORT");
        std::process::exit(2);
    };
    let listener = match vsock::listen(port) {
        Ok(listener) => listener,
        Err(err) => {
            eprintln!("vsock-peer: cannot listen on port {port}: {err}");
            std::process::exit(1);
        }
    };
    println!("vsock-peer: listening on {port}");
    loop {
        match vsock::accept(&listener) {
            Ok(stream) => {
                std::thread::spawn(move || {
                    if let Err(err) = serve(stream) {
                        eprintln!("vsock-peer: {err}");
                    }
                });
            }
            Err(err) => eprintln!("vsock-peer: accept: {err}"),
        }
    }
}
