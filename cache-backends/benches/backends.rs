//! Backend benchmarks: `cargo bench -p cache-backends`.
//!
//! Per backend: 1 KiB gets (lookup + copy into a buffer; ops/s) and 64 MiB gets copied in
//! 512 KiB chunks, the size of a 1 MiB segment's half (GB/s, and the ratio to a plain memcpy of
//! the same chunks measured in the same run). For memory: the bytes of bookkeeping per object
//! with 100k small objects, measured as resident memory growth minus key and payload bytes.

use std::hint::black_box;
use std::time::{Duration, Instant};

use cache_backends::{
    CacheBackend, DirectoryBackend, DirectoryOptions, MemoryBackend, PackBackend, ENTRY_OVERHEAD,
};

const SMALL: usize = 1024;
const LARGE: usize = 64 << 20;
const CHUNK: usize = 512 << 10;
const MEASURE_FOR: Duration = Duration::from_secs(1);

fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|field| field.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn bookkeeping_per_object() {
    const OBJECTS: usize = 100_000;
    const PAYLOAD: usize = 100;
    let backend = MemoryBackend::new(1 << 30, 1 << 20).expect("memory backend");
    let payload = [7u8; PAYLOAD];
    let mut key = String::with_capacity(32);
    let mut key_bytes = 0;
    let before = resident_bytes();
    for index in 0..OBJECTS {
        key.clear();
        use std::fmt::Write;
        let _ = write!(key, "/objects/{index:06}");
        key_bytes += key.len();
        let mut fill = backend
            .put(&key, PAYLOAD as u64)
            .expect("put")
            .expect("stored");
        fill.write(&payload).expect("write");
        fill.commit().expect("commit");
    }
    let after = resident_bytes();
    let stored = (key_bytes + OBJECTS * PAYLOAD) as f64;
    let measured = (after.saturating_sub(before) as f64 - stored) / OBJECTS as f64;
    let stats = backend.stats();
    println!(
        "memory bookkeeping, {OBJECTS} objects of {PAYLOAD} B (keys ~15 B): measured {measured:.1} \
         B/object (resident growth minus keys and payload); charged {ENTRY_OVERHEAD} B/object; \
         stats.bytes {} for {} objects",
        stats.bytes, stats.objects
    );
    black_box(&backend);
}

struct Row {
    name: String,
    small_ops: f64,
    large_gbps: f64,
}

fn small_gets(backend: &dyn CacheBackend) -> f64 {
    let mut buffer = Vec::with_capacity(SMALL);
    let mut ops = 0u64;
    let started = Instant::now();
    while started.elapsed() < MEASURE_FOR {
        for _ in 0..1000 {
            let object = backend.get("/small").expect("get").expect("present");
            buffer.clear();
            object.copy_to(0, SMALL, &mut buffer).expect("copy");
            black_box(&buffer);
        }
        ops += 1000;
    }
    ops as f64 / started.elapsed().as_secs_f64()
}

fn large_gets(backend: &dyn CacheBackend) -> f64 {
    let mut buffer = Vec::with_capacity(CHUNK);
    let mut bytes = 0u64;
    let started = Instant::now();
    while started.elapsed() < MEASURE_FOR * 2 {
        let object = backend.get("/large").expect("get").expect("present");
        let mut offset = 0u64;
        while offset < object.len() {
            let step = CHUNK.min((object.len() - offset) as usize);
            buffer.clear();
            object.copy_to(offset, step, &mut buffer).expect("copy");
            black_box(&buffer);
            offset += step as u64;
        }
        bytes += object.len();
    }
    bytes as f64 / started.elapsed().as_secs_f64() / 1e9
}

/// The baseline: the same chunked copy from a plain in-memory buffer.
fn memcpy_baseline(source: &[u8]) -> f64 {
    let mut buffer: Vec<u8> = Vec::with_capacity(CHUNK);
    let mut bytes = 0u64;
    let started = Instant::now();
    while started.elapsed() < MEASURE_FOR * 2 {
        for chunk in source.chunks(CHUNK) {
            buffer.clear();
            buffer.extend_from_slice(black_box(chunk));
            black_box(&buffer);
        }
        bytes += source.len() as u64;
    }
    bytes as f64 / started.elapsed().as_secs_f64() / 1e9
}

fn main() {
    // First, while the heap is fresh: nothing freed yet that the objects could reuse.
    bookkeeping_per_object();

    let dir = tempfile::tempdir().expect("temp dir");
    let tree = dir.path().join("tree");
    std::fs::create_dir(&tree).expect("tree");
    let small: Vec<u8> = (0..SMALL).map(|i| (i * 7) as u8).collect();
    let large: Vec<u8> = (0..LARGE).map(|i| (i * 13 + i / 4096) as u8).collect();
    std::fs::write(tree.join("small"), &small).expect("write");
    std::fs::write(tree.join("large"), &large).expect("write");
    let pack_path = dir.path().join("bench.pack");
    cache_backends::build_pack(&tree, &pack_path).expect("build pack");

    let memory = MemoryBackend::new(256 << 20, 128 << 20).expect("memory");
    for (path, body) in [("/small", &small), ("/large", &large)] {
        let mut fill = memory.put(path, body.len() as u64).expect("put").expect("stored");
        fill.write(body).expect("write");
        fill.commit().expect("commit");
    }
    let directory = DirectoryBackend::open(&tree, DirectoryOptions::default()).expect("directory");
    let pack = PackBackend::open(&pack_path).expect("pack");
    // Warm the page cache and verify the pack's checksums once, outside the measurement.
    for backend in [&directory as &dyn CacheBackend, &pack] {
        black_box(backend.get("/large").expect("get"));
    }

    let baseline = memcpy_baseline(&large);
    let backends: [(&str, &dyn CacheBackend); 3] =
        [("directory", &directory), ("memory", &memory), ("pack", &pack)];
    let rows: Vec<Row> = backends
        .iter()
        .map(|(name, backend)| Row {
            name: name.to_string(),
            small_ops: small_gets(*backend),
            large_gbps: large_gets(*backend),
        })
        .collect();

    println!();
    println!("baseline: memcpy of 64 MiB in 512 KiB chunks: {baseline:.2} GB/s");
    println!(
        "{:<10} {:>16} {:>16} {:>18}",
        "backend", "1 KiB gets/s", "64 MiB GB/s", "vs memcpy"
    );
    for row in rows {
        println!(
            "{:<10} {:>16.0} {:>16.2} {:>17.2}x",
            row.name,
            row.small_ops,
            row.large_gbps,
            row.large_gbps / baseline
        );
    }
}
