//! The benchmark entity (WORKLOADS.md "Entity document") and a deterministic generator.
//!
//! Every entity is a pure function of `(seed, index)`, so a workload can regenerate any
//! entity without keeping the data set in memory (W8 loads a million of them), and both
//! sides of a comparison see exactly the same values.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The larder table of [`Customer`] (fixed by the derive attribute).
pub(crate) const LARDER_TABLE: &str = "bench_larder_customers";
/// The raw sqlx table of the same shape.
pub(crate) const RAW_TABLE: &str = "bench_raw_customers";

/// The entity document: ~230 bytes of JSON for the 10 fields (~270 with the id), stored as
/// a document with the fields W5/W7 need registered and indexed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, larder::Entity)]
#[larder(table = "bench_larder_customers", document)]
pub(crate) struct Customer {
    /// Random (v4-shaped) UUID.
    pub(crate) id: Uuid,
    /// Display name.
    pub(crate) name: String,
    /// E-mail address.
    pub(crate) email: String,
    /// Age in years, 18..=90.
    #[larder(indexed)]
    pub(crate) age: i64,
    /// Whether the account is active.
    #[larder(indexed)]
    pub(crate) active: bool,
    /// Balance in cents (W5 updates change it).
    #[larder(indexed)]
    pub(crate) balance_cents: i64,
    /// Two-letter country code (one of [`COUNTRIES`]).
    #[larder(indexed)]
    pub(crate) country: String,
    /// City name.
    pub(crate) city: String,
    /// Three tags.
    pub(crate) tags: Vec<String>,
    /// RFC 3339 timestamp.
    pub(crate) created_at: String,
    /// A score in [0, 1000) with two decimals (W7 orders by it).
    #[larder(indexed)]
    pub(crate) score: f64,
}

/// The countries entities are spread over (uniformly).
pub(crate) const COUNTRIES: [&str; 20] = [
    "DE", "FR", "NL", "BE", "LU", "AT", "CH", "IT", "ES", "PT", "IE", "GB", "DK", "SE", "NO", "FI",
    "PL", "CZ", "US", "CA",
];

const CITIES: [&str; 16] = [
    "Berlin",
    "Paris",
    "Amsterdam",
    "Brussels",
    "Vienna",
    "Zurich",
    "Milan",
    "Madrid",
    "Lisbon",
    "Dublin",
    "London",
    "Copenhagen",
    "Stockholm",
    "Oslo",
    "Helsinki",
    "Warsaw",
];

/// Youngest age generated.
pub(crate) const MIN_AGE: i64 = 18;
/// Oldest age generated.
pub(crate) const MAX_AGE: i64 = 90;

/// The seeded generator of the data sets (one for every test and benchmark).
pub(crate) use larder_testkit::rng::Rng;

/// The `index`-th entity of data set `seed`.
pub(crate) fn customer(seed: u64, index: u64) -> Customer {
    let mut r = Rng::seeded(
        seed.wrapping_mul(0x0100_0000_01b3) ^ index.wrapping_mul(0xff51_afd7_ed55_8ccd),
    );
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&r.next_u64().to_le_bytes());
    bytes[8..].copy_from_slice(&r.next_u64().to_le_bytes());
    let id = uuid::Builder::from_random_bytes(bytes).into_uuid();
    let n = r.below(1_000_000);
    let tags = (0..3).map(|_| format!("tag-{:02}", r.below(40))).collect();
    let score_hundredths = u32::try_from(r.below(100_000)).unwrap_or(0);
    Customer {
        id,
        name: format!("Customer {n:06}"),
        email: format!("customer{n:06}@example.com"),
        age: r.range_i64(MIN_AGE, MAX_AGE),
        active: r.below(10) < 8,
        balance_cents: r.range_i64(0, 10_000_000),
        country: COUNTRIES[r.index(COUNTRIES.len())].to_owned(),
        city: CITIES[r.index(CITIES.len())].to_owned(),
        tags,
        created_at: format!(
            "20{:02}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
            r.range_i64(18, 25),
            r.range_i64(1, 12),
            r.range_i64(1, 28),
            r.below(24),
            r.below(60),
            r.below(60)
        ),
        score: f64::from(score_hundredths) / 100.0,
    }
}

/// The event payload of WORKLOADS.md: ~200 bytes of JSON in 7 fields; event type
/// [`ITEM_ADDED`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ItemAdded {
    /// The stream the event belongs to.
    pub(crate) stream_id: String,
    /// Its sequence number in the stream (1-based: its stream version).
    pub(crate) seq: u64,
    /// Stock-keeping unit.
    pub(crate) sku: String,
    /// Quantity (W8-events sums it).
    pub(crate) qty: i64,
    /// Unit price in cents.
    pub(crate) price_cents: i64,
    /// ISO currency code.
    pub(crate) currency: String,
    /// A 70-character note.
    pub(crate) note: String,
}

/// The event type of every benchmark event.
pub(crate) const ITEM_ADDED: &str = "ItemAdded";

const CURRENCIES: [&str; 4] = ["EUR", "USD", "GBP", "CHF"];

/// The `index`-th stream id of data set `seed`: a random (v4-shaped) UUID in text form.
pub(crate) fn stream_id(seed: u64, index: u64) -> String {
    let mut r = Rng::seeded(seed.wrapping_mul(0x2545_f491_4f6c_dd1d) ^ index.wrapping_mul(0x9e37));
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&r.next_u64().to_le_bytes());
    bytes[8..].copy_from_slice(&r.next_u64().to_le_bytes());
    uuid::Builder::from_random_bytes(bytes)
        .into_uuid()
        .hyphenated()
        .to_string()
}

/// The `seq`-th event (1-based) of stream `stream` (a pure function of its arguments, so
/// both sides of a comparison append exactly the same payloads).
pub(crate) fn item_added(stream: &str, seq: u64) -> ItemAdded {
    let h = stream.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let mut r = Rng::seeded(h ^ seq.wrapping_mul(0xff51_afd7_ed55_8ccd));
    let sku = format!("SKU-{:06}", r.below(1_000_000));
    let note = format!(
        "{} {} - gift wrap: {}, deliver to dock {:02} before {:02}:00, ref {:010}",
        CITIES[r.index(CITIES.len())],
        r.below(1000),
        if r.below(2) == 0 { "yes" } else { "no" },
        r.below(100),
        r.below(24),
        r.next_u64() % 10_000_000_000
    );
    ItemAdded {
        stream_id: stream.to_owned(),
        seq,
        sku,
        qty: r.range_i64(1, 20),
        price_cents: r.range_i64(99, 99_999),
        currency: CURRENCIES[r.index(CURRENCIES.len())].to_owned(),
        note: format!("{note:.<70.70}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_about_270_bytes_with_the_id() {
        assert_eq!(customer(1, 7), customer(1, 7));
        assert_ne!(customer(1, 7).id, customer(1, 8).id);
        let total: usize = (0..1000)
            .map(|i| serde_json::to_string(&customer(3, i)).unwrap().len())
            .sum();
        let avg = total / 1000;
        assert!((200..=300).contains(&avg), "average body {avg} bytes");
    }

    #[test]
    fn events_are_about_200_bytes_with_a_70_char_note() {
        let s = stream_id(1, 2);
        assert_eq!(s.len(), 36);
        assert_eq!(item_added(&s, 3), item_added(&s, 3));
        let total: usize = (1..=1000)
            .map(|i| {
                let e = item_added(&s, i);
                assert_eq!(e.note.chars().count(), 70, "{}", e.note);
                serde_json::to_string(&e).unwrap().len()
            })
            .sum();
        let avg = total / 1000;
        assert!((190..=215).contains(&avg), "average payload {avg} bytes");
    }
}
