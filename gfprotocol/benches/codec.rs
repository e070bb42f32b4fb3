//! Decoder throughput: `cargo bench -p gfprotocol --bench codec`.
//!
//! Prints nanoseconds per header for typical requests and responses, fed whole and one byte at a
//! time.

use std::hint::black_box;
use std::time::Instant;

use gfprotocol::codec::{encode_request, RequestDecoder, ResponseDecoder};
use gfprotocol::ResponseHeader;

const ROUNDS: u32 = 200_000;

fn measure(name: &str, mut run: impl FnMut()) {
    for _ in 0..ROUNDS / 10 {
        run();
    }
    let start = Instant::now();
    for _ in 0..ROUNDS {
        run();
    }
    let ns = start.elapsed().as_nanos() as f64 / f64::from(ROUNDS);
    println!("{name:<40} {ns:>8.1} ns/header");
}

fn main() {
    let request = encode_request("/courses/ud923/filecorpus/yellowstone.jpg").expect("valid path");
    let long_request = encode_request(&format!("/{}", "a".repeat(4095))).expect("valid path");
    let response = ResponseHeader::Ok { length: 1_234_567 }.encode();

    measure("request, whole", || {
        black_box(RequestDecoder::new().feed(black_box(&request)).ok());
    });
    measure("request, byte by byte", || {
        let mut decoder = RequestDecoder::new();
        for byte in black_box(&request).chunks(1) {
            if decoder.feed(byte).ok().flatten().is_some() {
                break;
            }
        }
    });
    measure("request, 4096-byte path", || {
        black_box(RequestDecoder::new().feed(black_box(&long_request)).ok());
    });
    measure("response OK, whole", || {
        black_box(ResponseDecoder::new().feed(black_box(&response)).ok());
    });
    measure("response OK, encode", || {
        black_box(black_box(ResponseHeader::Ok { length: 1_234_567 }).encode());
    });
}
