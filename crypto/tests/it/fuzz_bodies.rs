//! The fuzz target bodies run as proptests, so CI exercises them on stable.

use letstalk_crypto::fuzz;
use proptest::prelude::*;
use rand_core::OsRng;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn envelope_random_bytes(data in prop::collection::vec(any::<u8>(), 0..400)) {
        fuzz::envelope(&data);
    }

    #[test]
    fn envelope_mutated_valid(i in any::<prop::sample::Index>(), b: u8, cut in any::<prop::sample::Index>()) {
        let valid = valid_envelopes();
        let mut data = valid[i.index(valid.len())].clone();
        let pos = i.index(data.len());
        data[pos] = b;
        fuzz::envelope(&data);
        fuzz::envelope(&data[..cut.index(data.len() + 1)]);
    }

    #[test]
    fn age_stream_random_bytes(data in prop::collection::vec(any::<u8>(), 0..70_000)) {
        fuzz::age_stream(&data);
    }

    #[test]
    fn media_frame_random_bytes(data in prop::collection::vec(any::<u8>(), 0..4_000)) {
        fuzz::media_frame(&data);
    }
}

fn valid_envelopes() -> &'static Vec<Vec<u8>> {
    static V: std::sync::OnceLock<Vec<Vec<u8>>> = std::sync::OnceLock::new();
    V.get_or_init(|| {
        let mut pair = crate::util::pair(true);
        let a = pair.alice.encrypt(b"prekey", &mut OsRng).unwrap();
        let b = pair.bob.encrypt(b"normal", &mut OsRng).unwrap();
        for v in [&a, &b] {
            fuzz::envelope(v);
        }
        vec![a, b]
    })
}
