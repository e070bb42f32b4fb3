//! HTTP codec cost: `cargo bench -p gfprotocol --bench http`.
//!
//! Prints nanoseconds per call for a browser-like request head parsed whole and on a growing
//! buffer (one call per 64-byte read, as the front door calls it), and for writing a 200 head.

use std::hint::black_box;
use std::time::Instant;

use gfprotocol::http::{etag_of, parse_request, CacheStatus, Limits, ResponseHead, StatusCode};

const ROUNDS: u32 = 100_000;

fn measure(name: &str, mut run: impl FnMut()) {
    for _ in 0..ROUNDS / 10 {
        run();
    }
    let start = Instant::now();
    for _ in 0..ROUNDS {
        run();
    }
    let ns = start.elapsed().as_nanos() as f64 / f64::from(ROUNDS);
    println!("{name:<44} {ns:>8.1} ns/call");
}

fn main() {
    let head = b"GET /courses/ud923/filecorpus/yellowstone%20park.jpg HTTP/1.1\r\n\
        Host: cache.example.org\r\n\
        User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\r\n\
        Accept: image/avif,image/webp,image/png,image/svg+xml,image/*;q=0.8,*/*;q=0.5\r\n\
        Accept-Language: en-US,en;q=0.5\r\n\
        Accept-Encoding: gzip, deflate, br, zstd\r\n\
        Connection: keep-alive\r\n\
        If-None-Match: \"00000000000000ff\"\r\n\
        Range: bytes=0-65535\r\n\r\n";
    let limits = Limits::default();
    println!("request head: {} bytes", head.len());

    measure("parse_request, whole head", || {
        black_box(parse_request(black_box(head), &limits).ok());
    });
    measure("parse_request, growing buffer (64 B reads)", || {
        for end in (64..head.len()).step_by(64).chain([head.len()]) {
            black_box(parse_request(black_box(&head[..end]), &limits).ok());
        }
    });
    let etag = etag_of(255);
    let mut out = Vec::with_capacity(512);
    measure("ResponseHead 200, write", || {
        out.clear();
        ResponseHead::new(StatusCode::Ok)
            .content_length(1_234_567)
            .content_type_for("/courses/yellowstone.jpg")
            .etag(&etag)
            .accept_ranges()
            .x_cache(CacheStatus::Hit)
            .write(&mut out);
        black_box(&out);
    });
}
