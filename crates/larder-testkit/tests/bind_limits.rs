//! Issue 8 D12: `in` lists and `get_many` batches raised by configuration past what a
//! backend can bind (SQLite 32,766 parameters per statement, PostgreSQL 65,535) fail with a
//! typed `LimitExceeded` before any SQL — the same answer on every backend — and lists up to
//! `MAX_BOUND_VALUES` run and agree.

use larder::{Error, Limits, MAX_BOUND_VALUES, Spec, StoreConfig, field};
use larder_testkit::backends::{self, TestDb};
use larder_testkit::entities::Item;

fn config() -> StoreConfig {
    StoreConfig {
        limits: Limits {
            max_in_list: 1_000_000,
            max_batch: 1_000_000,
            ..Limits::default()
        },
        ..StoreConfig::default()
    }
}

async fn dbs(test: &str) -> Vec<TestDb> {
    let mut v = vec![backends::memory_with(config())];
    v.push(backends::sqlite_with(test, |_| {}, config()).await);
    if let Some(pg) = backends::postgres_with(test, |_| {}, config()).await {
        v.push(pg);
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_lists_past_the_bind_limit_are_typed_and_backends_agree() {
    for db in dbs("bind_limits::in_lists").await {
        let store = &db.store;
        store.register::<Item>().await.unwrap();
        let mut uow = store.begin().await.unwrap();
        for i in 0..50 {
            uow.repo::<Item>()
                .insert(&Item::new(&format!("i{i:03}"), "n", i))
                .await
                .unwrap();
        }
        uow.commit().await.unwrap();
        let mut uow = store.read().await.unwrap();
        // Just under the limit: runs, and counts the same everywhere.
        let many: Vec<i64> = (0..i64::try_from(MAX_BOUND_VALUES).unwrap()).collect();
        let n = uow
            .repo::<Item>()
            .count(&field("qty").is_in(many.clone()))
            .await
            .unwrap();
        assert_eq!(n, 50, "{}", db.backend);
        let n = uow
            .repo::<Item>()
            .count(&field("qty").not_in(many.clone()))
            .await
            .unwrap();
        assert_eq!(n, 0, "{}", db.backend);
        // Over it, alone or across several lists: typed, before SQL.
        let over: Vec<i64> = (0..1_000_000).collect();
        for spec in [
            field("qty").is_in(over.clone()),
            field("qty")
                .is_in(many.clone())
                .or(field("qty").not_in(vec![1, 2, 3, 4, 5])),
            field("qty")
                .is_in(many[..20_000].to_vec())
                .and(field("qty").is_in(many[..20_000].to_vec())),
        ] {
            let e = uow.repo::<Item>().count(&spec).await;
            assert!(
                matches!(e, Err(Error::LimitExceeded { .. })),
                "{}: {e:?}",
                db.backend
            );
        }
        // get_many: the same rule for ids.
        let ids: Vec<String> = (0..MAX_BOUND_VALUES).map(|i| format!("i{i:03}")).collect();
        let got = uow.repo::<Item>().get_many(&ids).await.unwrap();
        assert_eq!(got.len(), 50, "{}", db.backend);
        let ids: Vec<String> = (0..40_000).map(|i| format!("i{i:03}")).collect();
        let e = uow.repo::<Item>().get_many(&ids).await;
        assert!(
            matches!(e, Err(Error::LimitExceeded { .. })),
            "{}: {e:?}",
            db.backend
        );
        // The unit of work is still usable.
        assert_eq!(uow.repo::<Item>().count(&Spec::all()).await.unwrap(), 50);
        uow.commit().await.unwrap();
        db.finish().await;
    }
}
