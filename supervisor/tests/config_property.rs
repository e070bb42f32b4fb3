//! The promise behind check-config: a `[proxy]` section that `Config::parse` accepts starts a
//! proxy. Configs are generated with origins, timeouts and sizes that are often wrong; whatever
//! the supervisor accepts, `proxy_core::Proxy::start` must accept too.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use proptest::prelude::*;
use supervisor::config::Config;

fn region() -> Arc<ipc::Region> {
    static REGION: OnceLock<Arc<ipc::Region>> = OnceLock::new();
    Arc::clone(REGION.get_or_init(|| {
        let config = ipc::RegionConfig {
            segments: 2,
            segment_size: 64 << 10,
            cache_slots: 1,
            proxy_slots: 1,
        };
        // The region is marked for removal at creation: nothing outlives the test process.
        Arc::new(ipc::Region::create(&config, None).expect("region"))
    }))
}

fn origin() -> impl Strategy<Value = String> {
    let scheme = prop_oneof![Just("http://"), Just("https://"), Just("ftp://"), Just("")];
    let credentials = prop_oneof![Just(""), Just("user@"), Just("user:pw@")];
    let host = prop_oneof![
        Just("127.0.0.1"),
        Just("origin.internal"),
        Just("[::1]"),
        Just("")
    ];
    let port = prop_oneof![
        Just(String::new()),
        (0u32..100_000).prop_map(|p| format!(":{p}"))
    ];
    let path = prop_oneof![
        Just(""),
        Just("/"),
        Just("/base"),
        Just("/a b"),
        Just("/base/")
    ];
    let tail = prop_oneof![Just(""), Just("?v=1"), Just("#frag"), Just("?")];
    (scheme, credentials, host, port, path, tail)
        .prop_map(|(s, c, h, p, path, t)| format!("{s}{c}{h}{p}{path}{t}"))
}

fn duration() -> impl Strategy<Value = &'static str> {
    prop_oneof![
        6 => Just("2s"),
        1 => Just("0s"),
        1 => Just("1ms"),
        1 => Just("100ms"),
        1 => Just("1m"),
        1 => Just("1h 5m"),
        1 => Just("soon"),
        1 => Just("-1s")
    ]
}

fn size() -> impl Strategy<Value = &'static str> {
    prop_oneof![
        6 => Just("\"1MiB\""),
        1 => Just("0"),
        1 => Just("1"),
        1 => Just("\"64 KiB\""),
        1 => Just("\"2TiB\""),
        1 => Just("\"-1\""),
        1 => Just("-5")
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn every_accepted_proxy_section_starts(
        origin in proptest::option::of(origin()),
        threads in prop_oneof![8 => 1usize..40, 1 => Just(0usize)],
        max_threads in 1usize..64,
        redirects in prop_oneof![8 => 0usize..21, 1 => 21usize..30],
        cache_timeout in duration(),
        origin_timeout in duration(),
        max_object_size in size(),
    ) {
        let origin = origin.map(|o| format!("origin = {o:?}\n")).unwrap_or_default();
        let text = format!(
            "[proxy]\nlisten = \"127.0.0.1:0\"\nthreads = {threads}\nmax_threads = {max_threads}\n\
             max_redirects = {redirects}\n\
             {origin}cache_timeout = {cache_timeout:?}\norigin_timeout = {origin_timeout:?}\n\
             max_object_size = {max_object_size}\n\
             [cache]\nbackend = \"memory\"\nmemory = {{ capacity = \"1MiB\" }}\n"
        );
        let dir = Path::new("/");
        let Ok(config) = Config::parse(&text, &dir.join("generated.toml"), dir) else {
            return Ok(());
        };
        let proxy = proxy_core::ProxyConfig {
            slot: ipc::ProxySlot::from_raw(0),
            reuse_port: false,
            settings: config.proxy.settings,
        };
        match proxy_core::Proxy::start(region(), proxy) {
            Ok(running) => running.join().expect("the proxy stops"),
            Err(error) => prop_assert!(false, "accepted, yet the proxy refused it: {error}\n{text}"),
        }
    }
}
