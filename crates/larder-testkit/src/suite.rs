//! The conformance rules: one function per rule, run against every backend.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use larder::{
    Deadline, Error, MemoryAuditSink, Order, Query, Spec, Store, StoreConfig, TransactionOptions,
    UowOptions, field,
};
use serde_json::json;

use crate::backends::TestDb;
use crate::entities::{Account, Item, Measurement, Sample};

async fn setup(db: &TestDb) -> &Store {
    db.store.register::<Item>().await.expect("register items");
    db.store
        .register::<Account>()
        .await
        .expect("register accounts");
    &db.store
}

async fn insert_items(store: &Store, items: &[Item]) {
    let mut uow = store.begin().await.unwrap();
    for it in items {
        uow.repo::<Item>().insert(it).await.unwrap();
    }
    uow.commit().await.unwrap();
}

async fn get_item(store: &Store, id: &str) -> Option<Item> {
    let mut uow = store.read().await.unwrap();
    let r = uow
        .repo::<Item>()
        .get(&id.to_owned())
        .await
        .unwrap()
        .map(|v| v.value);
    uow.commit().await.unwrap();
    r
}

fn ids(items: &[larder::Versioned<Item>]) -> Vec<String> {
    items.iter().map(|v| v.id.clone()).collect()
}

// ---------------------------------------------------------------------------------------
// unit of work

/// Writes become visible to other units of work only after commit.
pub async fn commit_makes_writes_visible(db: &TestDb) {
    let store = setup(db).await;
    let mut uow = store.begin().await.unwrap();
    uow.repo::<Item>()
        .insert(&Item::new("a", "alpha", 1))
        .await
        .unwrap();
    // Read-your-writes inside the unit of work.
    assert!(uow.repo::<Item>().exists(&"a".to_owned()).await.unwrap());
    uow.commit().await.unwrap();
    assert_eq!(get_item(store, "a").await.unwrap().name, "alpha");
}

/// An explicit rollback discards every write.
pub async fn rollback_discards_writes(db: &TestDb) {
    let store = setup(db).await;
    let mut uow = store.begin().await.unwrap();
    uow.repo::<Item>()
        .insert(&Item::new("a", "alpha", 1))
        .await
        .unwrap();
    uow.rollback().await.unwrap();
    assert_eq!(get_item(store, "a").await, None);
}

/// Dropping a unit of work without commit rolls it back.
pub async fn drop_without_commit_rolls_back(db: &TestDb) {
    let store = setup(db).await;
    {
        let mut uow = store.begin().await.unwrap();
        uow.repo::<Item>()
            .insert(&Item::new("a", "alpha", 1))
            .await
            .unwrap();
    }
    assert_eq!(get_item(store, "a").await, None);
    // The connection is reusable for writes afterwards.
    insert_items(store, &[Item::new("b", "beta", 2)]).await;
    assert!(get_item(store, "b").await.is_some());
}

/// A panic while a unit of work is open rolls it back.
pub async fn panic_inside_a_unit_of_work_rolls_back(db: &TestDb) {
    let store = setup(db).await.clone();
    let s2 = store.clone();
    let r = tokio::spawn(async move {
        let mut uow = s2.begin().await.unwrap();
        uow.repo::<Item>()
            .insert(&Item::new("a", "alpha", 1))
            .await
            .unwrap();
        panic!("boom (expected by the test)");
    })
    .await;
    assert!(r.unwrap_err().is_panic());
    assert_eq!(get_item(&store, "a").await, None);
}

/// Read-only units of work refuse writes before touching the database.
pub async fn read_only_unit_of_work_rejects_writes(db: &TestDb) {
    let store = setup(db).await;
    let mut uow = store.read().await.unwrap();
    let e = uow.repo::<Item>().insert(&Item::new("a", "alpha", 1)).await;
    assert!(matches!(e, Err(Error::ReadOnly { .. })), "{e:?}");
    let e = uow.repo::<Item>().delete(&"a".to_owned(), 1).await;
    assert!(matches!(e, Err(Error::ReadOnly { .. })), "{e:?}");
    assert_eq!(uow.repo::<Item>().count(&Spec::all()).await.unwrap(), 0);
    uow.commit().await.unwrap();
}

type Log = Arc<Mutex<Vec<&'static str>>>;

fn push(log: &Log, s: &'static str) -> impl FnOnce() + Send + 'static {
    let log = log.clone();
    move || log.lock().unwrap().push(s)
}

/// pre-commit runs before, post-commit after; rollback hooks do not run on commit.
pub async fn hooks_run_around_commit_in_order(db: &TestDb) {
    let store = setup(db).await;
    let log: Log = Log::default();
    let mut uow = store.begin().await.unwrap();
    let l = log.clone();
    uow.on_pre_commit(move |_uow| {
        Box::pin(async move {
            l.lock().unwrap().push("pre_commit");
            Ok(())
        })
    });
    uow.on_post_commit(push(&log, "post_commit"));
    uow.on_pre_rollback(push(&log, "pre_rollback"));
    uow.on_post_rollback(push(&log, "post_rollback"));
    uow.repo::<Item>()
        .insert(&Item::new("a", "alpha", 1))
        .await
        .unwrap();
    uow.commit().await.unwrap();
    assert_eq!(*log.lock().unwrap(), ["pre_commit", "post_commit"]);
}

/// A failing pre-commit hook rolls back and its error is returned.
pub async fn failing_pre_commit_hook_rolls_back(db: &TestDb) {
    let store = setup(db).await;
    let log: Log = Log::default();
    let mut uow = store.begin().await.unwrap();
    uow.repo::<Item>()
        .insert(&Item::new("a", "alpha", 1))
        .await
        .unwrap();
    uow.on_pre_commit(|_uow| {
        Box::pin(async { Err(Error::callback("pre-commit hook", "invariant violated")) })
    });
    uow.on_post_commit(push(&log, "post_commit"));
    uow.on_post_rollback(push(&log, "post_rollback"));
    let e = uow.commit().await;
    assert!(matches!(e, Err(Error::Callback { .. })), "{e:?}");
    assert_eq!(*log.lock().unwrap(), ["post_rollback"]);
    assert_eq!(get_item(store, "a").await, None);
}

/// Rollback hooks also run when a unit of work is dropped.
pub async fn rollback_hooks_run_on_drop(db: &TestDb) {
    let store = setup(db).await;
    let log: Log = Log::default();
    {
        let mut uow = store.begin().await.unwrap();
        uow.on_pre_rollback(push(&log, "pre_rollback"));
        uow.on_post_rollback(push(&log, "post_rollback"));
        uow.on_post_commit(push(&log, "post_commit"));
    }
    assert_eq!(*log.lock().unwrap(), ["pre_rollback", "post_rollback"]);
}

/// A pre-commit hook writes inside the same transaction.
pub async fn pre_commit_hook_can_write_in_the_transaction(db: &TestDb) {
    let store = setup(db).await;
    let mut uow = store.begin().await.unwrap();
    uow.on_pre_commit(|uow| {
        Box::pin(async move {
            uow.repo::<Item>()
                .insert(&Item::new("audit", "from hook", 0))
                .await?;
            Ok(())
        })
    });
    uow.commit().await.unwrap();
    assert!(get_item(store, "audit").await.is_some());
}

/// A failing savepoint scope is undone; the outer work commits.
pub async fn savepoint_error_undoes_only_the_inner_scope(db: &TestDb) {
    let store = setup(db).await;
    let log: Log = Log::default();
    let mut uow = store.begin().await.unwrap();
    uow.repo::<Item>()
        .insert(&Item::new("outer", "o", 1))
        .await
        .unwrap();
    let l2 = log.clone();
    let r: Result<(), Error> = uow
        .savepoint(|uow| {
            Box::pin(async move {
                uow.repo::<Item>()
                    .insert(&Item::new("inner", "i", 2))
                    .await?;
                uow.on_post_commit(push(&l2, "inner hook"));
                Err(Error::callback("scope", "changed my mind"))
            })
        })
        .await;
    assert!(r.is_err());
    assert!(
        !uow.repo::<Item>()
            .exists(&"inner".to_owned())
            .await
            .unwrap()
    );
    uow.on_post_commit(push(&log, "outer hook"));
    uow.commit().await.unwrap();
    assert!(get_item(store, "outer").await.is_some());
    assert!(get_item(store, "inner").await.is_none());
    assert_eq!(
        *log.lock().unwrap(),
        ["outer hook"],
        "hooks of an undone scope are dropped"
    );
}

/// A successful savepoint scope (nested twice) keeps its work.
pub async fn savepoint_success_keeps_inner_work(db: &TestDb) {
    let store = setup(db).await;
    let mut uow = store.begin().await.unwrap();
    uow.savepoint(|uow| {
        Box::pin(async move {
            uow.repo::<Item>().insert(&Item::new("l1", "x", 1)).await?;
            uow.savepoint(|uow| {
                Box::pin(async move {
                    uow.repo::<Item>().insert(&Item::new("l2", "y", 2)).await?;
                    Ok::<_, Error>(())
                })
            })
            .await
        })
    })
    .await
    .unwrap();
    uow.commit().await.unwrap();
    assert!(get_item(store, "l1").await.is_some());
    assert!(get_item(store, "l2").await.is_some());
}

/// `transaction` commits on Ok and rolls back on Err.
pub async fn transaction_helper_commits_on_ok_and_rolls_back_on_err(db: &TestDb) {
    let store = setup(db).await;
    let v: u64 = store
        .transaction(|uow| {
            Box::pin(async move {
                uow.repo::<Item>().insert(&Item::new("ok", "x", 1)).await?;
                Ok::<_, Error>(7)
            })
        })
        .await
        .unwrap();
    assert_eq!(v, 7);
    let r: Result<(), Error> = store
        .transaction(|uow| {
            Box::pin(async move {
                uow.repo::<Item>().insert(&Item::new("err", "x", 1)).await?;
                Err(Error::callback("test", "fail"))
            })
        })
        .await;
    assert!(r.is_err());
    assert!(get_item(store, "ok").await.is_some());
    assert!(get_item(store, "err").await.is_none());
}

/// A stale read conflicts; with `retry_on_conflict` the closure runs again on fresh data.
pub async fn transaction_helper_retries_conflicts_only_when_opted_in(db: &TestDb) {
    let store = setup(db).await;
    insert_items(store, &[Item::new("c", "x", 0)]).await;
    // Make the first attempt stale: bump the version behind the closure's back once.
    let attempts = Arc::new(Mutex::new(0));
    let run = |opts: TransactionOptions| {
        let attempts = attempts.clone();
        let store = store.clone();
        async move {
            store
                .transaction_with(UowOptions::default(), &opts, |uow| {
                    let attempts = attempts.clone();
                    Box::pin(async move {
                        let mut item = uow.repo::<Item>().require(&"c".to_owned()).await?;
                        let first = {
                            let mut a = attempts.lock().unwrap();
                            *a += 1;
                            *a == 1
                        };
                        if first {
                            // Simulate a concurrent writer: our copy's version is stale.
                            item.version += 100;
                        }
                        item.qty += 1;
                        uow.repo::<Item>().save(&mut item).await?;
                        Ok::<_, Error>(())
                    })
                })
                .await
        }
    };
    let e = run(TransactionOptions::default()).await;
    assert!(matches!(e, Err(Error::Conflict { .. })), "{e:?}");
    *attempts.lock().unwrap() = 0;
    run(TransactionOptions::default().with_retry_on_conflict(true))
        .await
        .unwrap();
    assert_eq!(*attempts.lock().unwrap(), 2);
    assert_eq!(get_item(store, "c").await.unwrap().qty, 1);
}

/// Hooks and writes after commit are impossible; the type system consumes the unit of
/// work, and the escape hatch reports `Closed`.
pub async fn finished_unit_of_work_is_closed(db: &TestDb) {
    let store = setup(db).await;
    let mut uow = store.begin().await.unwrap();
    assert!(uow.backend_transaction().is_some());
    uow.commit().await.unwrap();
}

// ---------------------------------------------------------------------------------------
// repository

fn rich_item() -> Item {
    Item {
        id: "r-1".into(),
        name: "Ünïcødé \"quoted\" 'single' %_\\".into(),
        qty: -42,
        price: Some(19.99),
        active: false,
        tag: Some("t".into()),
        meta: Some(json!({"k": [1, 2, {"n": null}], "s": "v"})),
        note: "body only".into(),
    }
}

/// Documents round-trip exactly, every field type included.
pub async fn insert_and_get_round_trip_documents(db: &TestDb) {
    let store = setup(db).await;
    let it = rich_item();
    let mut uow = store.begin().await.unwrap();
    let v = uow.repo::<Item>().insert(&it).await.unwrap();
    assert_eq!(v.version, 1);
    uow.commit().await.unwrap();
    let mut uow = store.read().await.unwrap();
    let got = uow.repo::<Item>().require(&it.id).await.unwrap();
    assert_eq!(got.version, 1);
    assert_eq!(got.value, it);
    // Indexed fields are queryable with the same values.
    let page = uow
        .repo::<Item>()
        .find(&Query::new(
            field("name")
                .eq(it.name.clone())
                .and(field("price").eq(19.99)),
        ))
        .await
        .unwrap();
    assert_eq!(ids(&page.items), ["r-1"]);
}

/// Mapped-column entities round-trip (renamed column, UUID, skipped field reset).
pub async fn insert_and_get_round_trip_mapped_columns(db: &TestDb) {
    let store = setup(db).await;
    let a = Account {
        id: 7,
        owner: "ada".into(),
        balance: 1_000,
        external_ref: Some(uuid::Uuid::from_u128(0x1234)),
        cached: Some("not stored".into()),
    };
    let mut uow = store.begin().await.unwrap();
    uow.repo::<Account>().insert(&a).await.unwrap();
    let got = uow.repo::<Account>().require(&7).await.unwrap();
    assert_eq!(got.owner, "ada");
    assert_eq!(got.balance, 1_000);
    assert_eq!(got.external_ref, a.external_ref);
    assert_eq!(got.cached, None, "skipped fields are not stored");
    let n = uow
        .repo::<Account>()
        .count(
            &field("balance")
                .ge(1_000)
                .and(field("external_ref").eq(a.external_ref.unwrap())),
        )
        .await
        .unwrap();
    assert_eq!(n, 1);
    uow.commit().await.unwrap();
}

/// A duplicate id is `AlreadyExists`, and the unit of work can go on and commit.
pub async fn duplicate_insert_is_already_exists_and_uow_stays_usable(db: &TestDb) {
    let store = setup(db).await;
    insert_items(store, &[Item::new("a", "alpha", 1)]).await;
    let mut uow = store.begin().await.unwrap();
    let e = uow.repo::<Item>().insert(&Item::new("a", "again", 2)).await;
    assert!(
        matches!(&e, Err(Error::AlreadyExists { entity: "item", id }) if id == "a"),
        "{e:?}"
    );
    uow.repo::<Item>()
        .insert(&Item::new("b", "beta", 2))
        .await
        .unwrap();
    uow.commit().await.unwrap();
    assert_eq!(get_item(store, "a").await.unwrap().name, "alpha");
    assert!(get_item(store, "b").await.is_some());
}

/// Updating with a stale version fails with both versions named.
pub async fn update_with_stale_version_conflicts(db: &TestDb) {
    let store = setup(db).await;
    insert_items(store, &[Item::new("a", "alpha", 1)]).await;
    let mut uow = store.begin().await.unwrap();
    let mut it = uow.repo::<Item>().require(&"a".to_owned()).await.unwrap();
    it.qty = 2;
    assert_eq!(uow.repo::<Item>().update(&it, 1).await.unwrap(), 2);
    let e = uow.repo::<Item>().update(&it, 1).await;
    assert!(
        matches!(
            e,
            Err(Error::Conflict {
                expected: 1,
                actual: Some(2),
                ..
            })
        ),
        "{e:?}"
    );
    // The unit of work is still usable after a conflict.
    assert_eq!(uow.repo::<Item>().update(&it, 2).await.unwrap(), 3);
    uow.commit().await.unwrap();
    assert_eq!(get_item(store, "a").await.unwrap().qty, 2);
}

/// Updating a missing entity is `NotFound`.
pub async fn update_of_missing_entity_is_not_found(db: &TestDb) {
    let store = setup(db).await;
    let mut uow = store.begin().await.unwrap();
    let e = uow
        .repo::<Item>()
        .update(&Item::new("nope", "x", 1), 1)
        .await;
    assert!(matches!(e, Err(Error::NotFound { .. })), "{e:?}");
    let e = uow.repo::<Item>().require(&"nope".to_owned()).await;
    assert!(matches!(e, Err(Error::NotFound { .. })), "{e:?}");
}

/// Delete checks the version; deleting twice is `NotFound`.
pub async fn delete_checks_the_version(db: &TestDb) {
    let store = setup(db).await;
    insert_items(store, &[Item::new("a", "alpha", 1)]).await;
    let mut uow = store.begin().await.unwrap();
    let e = uow.repo::<Item>().delete(&"a".to_owned(), 5).await;
    assert!(
        matches!(
            e,
            Err(Error::Conflict {
                expected: 5,
                actual: Some(1),
                ..
            })
        ),
        "{e:?}"
    );
    uow.repo::<Item>().delete(&"a".to_owned(), 1).await.unwrap();
    let e = uow.repo::<Item>().delete(&"a".to_owned(), 1).await;
    assert!(matches!(e, Err(Error::NotFound { .. })), "{e:?}");
    uow.commit().await.unwrap();
    assert_eq!(get_item(store, "a").await, None);
}

/// `get_many` returns found entities in the order asked.
pub async fn get_many_keeps_input_order_and_skips_missing(db: &TestDb) {
    let store = setup(db).await;
    insert_items(
        store,
        &[
            Item::new("a", "1", 1),
            Item::new("b", "2", 2),
            Item::new("c", "3", 3),
        ],
    )
    .await;
    let mut uow = store.read().await.unwrap();
    let got = uow
        .repo::<Item>()
        .get_many(&["c".into(), "missing".into(), "a".into()])
        .await
        .unwrap();
    assert_eq!(ids(&got), ["c", "a"]);
    assert!(uow.repo::<Item>().get_many(&[]).await.unwrap().is_empty());
}

/// `exists` and `count`.
pub async fn exists_and_count(db: &TestDb) {
    let store = setup(db).await;
    insert_items(
        store,
        &[
            Item::new("a", "x", 1),
            Item::new("b", "x", 2),
            Item::new("c", "y", 3),
        ],
    )
    .await;
    let mut uow = store.read().await.unwrap();
    let mut repo = uow.repo::<Item>();
    assert!(repo.exists(&"b".to_owned()).await.unwrap());
    assert!(!repo.exists(&"z".to_owned()).await.unwrap());
    assert_eq!(repo.count(&field("name").eq("x")).await.unwrap(), 2);
    assert_eq!(repo.count(&Spec::all()).await.unwrap(), 3);
}

/// `save` updates with the carried version and bumps it.
pub async fn save_bumps_the_version(db: &TestDb) {
    let store = setup(db).await;
    insert_items(store, &[Item::new("a", "x", 1)]).await;
    let mut uow = store.begin().await.unwrap();
    let mut it = uow.repo::<Item>().require(&"a".to_owned()).await.unwrap();
    it.qty = 10;
    uow.repo::<Item>().save(&mut it).await.unwrap();
    it.qty = 11;
    uow.repo::<Item>().save(&mut it).await.unwrap();
    assert_eq!(it.version, 3);
    uow.commit().await.unwrap();
    let got = get_item(store, "a").await.unwrap();
    assert_eq!(got.qty, 11);
}

// ---------------------------------------------------------------------------------------
// specifications

fn dataset() -> Vec<Item> {
    let mut v = Vec::new();
    type Row<'a> = (
        &'a str,
        &'a str,
        i64,
        Option<f64>,
        bool,
        Option<&'a str>,
        Option<serde_json::Value>,
    );
    let rows: [Row<'_>; 8] = [
        (
            "i1",
            "apple",
            5,
            Some(1.5),
            true,
            Some("fruit"),
            Some(json!({"color": "red", "tags": ["a", "b"]})),
        ),
        (
            "i2",
            "Apricot",
            3,
            None,
            true,
            Some("fruit"),
            Some(json!(["x", "y"])),
        ),
        ("i3", "banana", 12, Some(0.25), false, None, Some(json!({}))),
        ("i4", "50% off", 0, Some(9.0), true, Some(""), None),
        (
            "i5",
            "under_score",
            -2,
            Some(-1.0),
            false,
            Some("misc"),
            Some(json!([])),
        ),
        (
            "i6",
            "back\\slash",
            7,
            None,
            true,
            None,
            Some(json!({"color": "green"})),
        ),
        (
            "i7",
            "Ünïcode",
            100,
            Some(100.0),
            false,
            Some("misc"),
            Some(json!([1, 2, 3])),
        ),
        (
            "i8",
            "cherry",
            5,
            Some(2.0),
            true,
            Some("fruit"),
            Some(json!({"n": 1})),
        ),
    ];
    for (id, name, qty, price, active, tag, meta) in rows {
        v.push(Item {
            id: id.into(),
            name: name.into(),
            qty,
            price,
            active,
            tag: tag.map(Into::into),
            meta,
            note: String::new(),
        });
    }
    v
}

/// Each operator selects exactly the rows SQL semantics say (three-valued logic included).
pub async fn specification_operators_select_the_expected_rows(db: &TestDb) {
    let store = setup(db).await;
    insert_items(store, &dataset()).await;
    let caps = store.capabilities().clone();
    let mut cases: Vec<(Spec, Vec<&str>)> = vec![
        (field("qty").eq(5), vec!["i1", "i8"]),
        (field("qty").ne(5), vec!["i2", "i3", "i4", "i5", "i6", "i7"]),
        (field("qty").lt(3), vec!["i4", "i5"]),
        (field("qty").le(3), vec!["i2", "i4", "i5"]),
        (field("qty").gt(12), vec!["i7"]),
        (field("qty").ge(12), vec!["i3", "i7"]),
        (field("price").gt(1.0), vec!["i1", "i4", "i7", "i8"]),
        // NULL prices match neither a comparison nor its negation.
        (field("price").gt(1.0).not(), vec!["i3", "i5"]),
        (field("price").is_null(), vec!["i2", "i6"]),
        (
            field("price").is_not_null(),
            vec!["i1", "i3", "i4", "i5", "i7", "i8"],
        ),
        (
            field("tag").is_in(["fruit", "misc"]),
            vec!["i1", "i2", "i5", "i7", "i8"],
        ),
        (field("tag").not_in(["fruit"]), vec!["i4", "i5", "i7"]),
        (field("tag").is_in(Vec::<String>::new()), vec![]),
        (
            field("tag").not_in(Vec::<String>::new()),
            vec!["i1", "i2", "i3", "i4", "i5", "i6", "i7", "i8"],
        ),
        (field("qty").between(3, 7), vec!["i1", "i2", "i6", "i8"]),
        (field("qty").not_between(3, 7), vec!["i3", "i4", "i5", "i7"]),
        (field("name").like("a%"), vec!["i1"]),
        (field("name").ilike("a%"), vec!["i1", "i2"]),
        (field("name").like("_pple"), vec!["i1"]),
        (field("name").contains("%"), vec!["i4"]),
        (field("name").contains("_"), vec!["i5"]),
        (field("name").contains("\\"), vec!["i6"]),
        (field("name").icontains("AN"), vec!["i3"]),
        (field("name").starts_with("ch"), vec!["i8"]),
        (field("name").ends_with("ana"), vec!["i3"]),
        (field("name").eq("Ünïcode"), vec!["i7"]),
        (field("tag").is_empty(), vec!["i4"]),
        (field("meta").is_empty(), vec!["i3", "i5"]),
        (field("meta").json_has_key("color"), vec!["i1", "i6"]),
        (field("meta").json_has_key("x"), vec!["i2"]),
        (field("active").eq(false), vec!["i3", "i5", "i7"]),
        (
            field("active")
                .eq(true)
                .and(field("qty").gt(4).or(field("tag").is_null())),
            vec!["i1", "i6", "i8"],
        ),
        (Spec::Or { of: vec![] }, vec![]),
        (
            Spec::And { of: vec![] },
            vec!["i1", "i2", "i3", "i4", "i5", "i6", "i7", "i8"],
        ),
        (field("id").is_in(["i2", "i9"]), vec!["i2"]),
    ];
    if caps.regex {
        cases.push((field("name").regex("^[a-c].*a$"), vec!["i3"]));
    }
    if caps.json_contains {
        cases.push((
            field("meta").json_contains(json!({"color": "red"})),
            vec!["i1"],
        ));
        cases.push((field("meta").json_contains(json!(["y"])), vec!["i2"]));
    }
    let mut uow = store.read().await.unwrap();
    for (spec, expected) in cases {
        let page = uow
            .repo::<Item>()
            .find(&Query::new(spec.clone()).with_limit(100))
            .await
            .unwrap_or_else(|e| panic!("{spec:?}: {e}"));
        assert_eq!(
            ids(&page.items),
            expected,
            "{}",
            serde_json::to_string(&spec).unwrap()
        );
        let n = uow.repo::<Item>().count(&spec).await.unwrap();
        assert_eq!(n, expected.len() as u64, "count of {spec:?}");
    }
}

/// Unknown fields, wrong types, hostile names: typed errors, nothing sent.
pub async fn unknown_fields_and_bad_values_are_typed_errors(db: &TestDb) {
    let store = setup(db).await;
    let mut uow = store.read().await.unwrap();
    let mut repo = uow.repo::<Item>();
    let e = repo.count(&field("name; DROP TABLE items").eq(1)).await;
    assert!(matches!(e, Err(Error::UnknownField { .. })), "{e:?}");
    let e = repo.count(&field("note").eq("x")).await;
    assert!(
        matches!(e, Err(Error::UnknownField { .. })),
        "body-only fields are not queryable: {e:?}"
    );
    let e = repo.count(&field("qty").eq("many")).await;
    assert!(matches!(e, Err(Error::TypeMismatch { .. })), "{e:?}");
    let e = repo.count(&field("qty").eq(larder::Value::Null)).await;
    assert!(matches!(e, Err(Error::InvalidQuery(_))), "{e:?}");
    let e = repo.count(&field("tag").is_in([larder::Value::Null])).await;
    assert!(matches!(e, Err(Error::InvalidQuery(_))), "{e:?}");
    let e = repo
        .find(&Query::all().order_by(Order::asc("qty; --")))
        .await;
    assert!(matches!(e, Err(Error::UnknownField { .. })), "{e:?}");
    let e = repo.find(&Query::all().order_by(Order::asc("meta"))).await;
    assert!(matches!(e, Err(Error::InvalidQuery(_))), "{e:?}");
}

/// Operators a backend lacks are declared in its capabilities and fail with
/// `Unsupported` before any I/O.
pub async fn unsupported_operators_are_declared_and_typed(db: &TestDb) {
    let store = setup(db).await;
    let caps = store.capabilities().clone();
    let mut uow = store.read().await.unwrap();
    let e = uow
        .repo::<Item>()
        .count(&field("meta").json_contains(json!({"a": 1})))
        .await;
    if caps.json_contains {
        assert!(e.is_ok(), "{e:?}");
    } else {
        assert!(
            matches!(
                e,
                Err(Error::Unsupported {
                    operation: "json_contains",
                    ..
                })
            ),
            "{e:?}"
        );
    }
    let e = uow.repo::<Item>().count(&field("name").regex("^a")).await;
    if caps.regex {
        assert!(e.is_ok(), "{e:?}");
    } else {
        assert!(
            matches!(
                e,
                Err(Error::Unsupported {
                    operation: "regex",
                    ..
                })
            ),
            "{e:?}"
        );
    }
}

/// The rows of the regex rules: newlines, accented letters in both cases, digits,
/// underscores, spaces, tabs, punctuation.
fn regex_items() -> Vec<Item> {
    [
        ("r01", "a\nb"),
        ("r02", "\n"),
        ("r03", "é"),
        ("r04", "É"),
        ("r05", "abc_123"),
        ("r06", "hello world"),
        ("r07", "ABC"),
        ("r08", "日本"),
        ("r09", "a.b"),
        ("r10", "x9"),
        ("r11", "tab\there"),
    ]
    .into_iter()
    .map(|(id, name)| Item::new(id, name, 1))
    .collect()
}

/// `regex` means one thing on every backend (larder's dialect, see
/// `larder::spec::FieldExpr::regex`): `.` stops at newlines unless `(?s)`, `(?i)` folds
/// ASCII letters only, `\d \w \s` are ASCII, `^ $` anchor the whole text.
pub async fn regex_dialect_selects_the_same_rows_everywhere(db: &TestDb) {
    let store = setup(db).await;
    if !store.capabilities().regex {
        return;
    }
    insert_items(store, &regex_items()).await;
    let cases: Vec<(&str, Vec<&str>)> = vec![
        ("a.*b", vec!["r05", "r09", "r11"]),
        ("(?s)a.*b", vec!["r01", "r05", "r09", "r11"]),
        ("^.$", vec!["r03", "r04"]),
        ("(?s)^.$", vec!["r02", "r03", "r04"]),
        ("(?i)é", vec!["r03"]),
        ("(?i)^É$", vec!["r04"]),
        ("^[éÉ]$", vec!["r03", "r04"]),
        ("(?i)^abc", vec!["r05", "r07"]),
        ("^abc", vec!["r05"]),
        (r"^\w+$", vec!["r05", "r07", "r10"]),
        (r"\s", vec!["r01", "r02", "r06", "r11"]),
        (
            r"^\S+$",
            vec!["r03", "r04", "r05", "r07", "r08", "r09", "r10"],
        ),
        (r"\d{3}$", vec!["r05"]),
        (
            r"^\D*$",
            vec![
                "r01", "r02", "r03", "r04", "r06", "r07", "r08", "r09", "r11",
            ],
        ),
        (r"a\.b", vec!["r09"]),
        (
            r"[^a-z\n]",
            vec![
                "r03", "r04", "r05", "r06", "r07", "r08", "r09", "r10", "r11",
            ],
        ),
        ("^日", vec!["r08"]),
        ("o w", vec!["r06"]),
        ("^(?:hello|x)", vec!["r06", "r10"]),
        ("^(hello|x)[0-9 ]", vec!["r06", "r10"]),
        ("b$", vec!["r01", "r09"]),
        (r"^a\nb$", vec!["r01"]),
        (r"\t", vec!["r11"]),
    ];
    let mut uow = store.read().await.unwrap();
    for (pattern, expected) in cases {
        let spec = field("name").regex(pattern);
        let page = uow
            .repo::<Item>()
            .find(&Query::new(spec).with_limit(100))
            .await
            .unwrap_or_else(|e| panic!("pattern {pattern:?}: {e}"));
        assert_eq!(ids(&page.items), expected, "pattern {pattern:?}");
    }
    // The largest patterns the dialect accepts run on every engine (PostgreSQL refuses
    // "too complex" patterns only well above this size).
    for pattern in [
        "(?:[^a]{100}){100}",
        "(?:(?:a|b|c){255}){9}",
        r"(?:\w{255}){9}",
        "(?s).{255}",
    ] {
        let n = uow
            .repo::<Item>()
            .count(&field("name").regex(pattern))
            .await;
        assert_eq!(
            n.unwrap_or_else(|e| panic!("{pattern:?}: {e}")),
            0,
            "{pattern:?}"
        );
    }
    uow.commit().await.unwrap();
}

/// Patterns outside larder's regex dialect (Unicode classes, counts over 255, named groups,
/// nested repetitions, `\z`, hex escapes, word boundaries, other flags, NUL, syntax errors)
/// are `InvalidQuery` on every backend, before any SQL: never a backend error.
pub async fn non_portable_regex_is_invalid_query_everywhere(db: &TestDb) {
    let store = setup(db).await;
    insert_items(store, &regex_items()).await;
    let mut uow = store.read().await.unwrap();
    for pattern in [
        r"\p{L}",
        r"\pL",
        "a{256}",
        "(?P<x>a)",
        "a**",
        r"\z",
        r"\x{41}",
        r"\b",
        r"\A",
        r"\u0041",
        "[[:alpha:]]",
        "[a&&b]",
        "(?m)^a",
        "(?x) a",
        "(?:a{255}){255}",
        "a\0",
        "(",
        "[b-a]",
        "\u{1b}[2J(",
    ] {
        let spec = field("name").regex(pattern);
        let e = uow.repo::<Item>().count(&spec).await;
        assert!(
            matches!(e, Err(Error::InvalidQuery(_))),
            "{pattern:?}: {e:?}"
        );
        let msg = e.unwrap_err().to_string();
        assert!(
            !msg.chars().any(char::is_control),
            "{pattern:?}: one clean line: {msg:?}"
        );
        let e = uow.repo::<Item>().find(&Query::new(spec)).await;
        assert!(
            matches!(e, Err(Error::InvalidQuery(_))),
            "{pattern:?}: {e:?}"
        );
    }
    // The unit of work is still healthy: nothing reached the database.
    assert_eq!(uow.repo::<Item>().count(&Spec::all()).await.unwrap(), 11);
    uow.commit().await.unwrap();
}

/// NUL (U+0000) in text is refused the same way on every backend, before any SQL: written
/// values (text fields, text ids, JSON strings, document bodies) are typed errors, and so
/// are operands (also through the JSON form) and looked-up ids. The unit of work stays
/// usable and nothing is written.
pub async fn nul_in_text_is_a_typed_error_everywhere(db: &TestDb) {
    let store = setup(db).await;
    insert_items(
        store,
        &[Item::new("ok", "plain", 1), Item::new("ab", "ab", 2)],
    )
    .await;
    let mut uow = store.begin().await.unwrap();
    let field_of = |e: &Error| match e {
        Error::TypeMismatch { field, .. } => field.clone(),
        other => panic!("expected a type mismatch, got {other:?}"),
    };
    let bad_id = Item::new("n\0", "x", 1);
    let e = uow.repo::<Item>().insert(&bad_id).await.unwrap_err();
    assert_eq!(field_of(&e), "id");
    let e = uow
        .repo::<Item>()
        .insert(&Item::new("n1", "a\0b", 1))
        .await
        .unwrap_err();
    assert_eq!(field_of(&e), "name");
    assert!(e.to_string().contains("U+0000"), "{e}");
    let mut tagged = Item::new("n2", "x", 1);
    tagged.tag = Some("\0".into());
    assert_eq!(
        field_of(&uow.repo::<Item>().insert(&tagged).await.unwrap_err()),
        "tag"
    );
    let mut meta = Item::new("n3", "x", 1);
    meta.meta = Some(json!({"k": ["\u{0}"]}));
    assert_eq!(
        field_of(&uow.repo::<Item>().insert(&meta).await.unwrap_err()),
        "meta"
    );
    let mut note = Item::new("n4", "x", 1);
    note.note = "body only\0".into();
    let e = uow.repo::<Item>().insert(&note).await.unwrap_err();
    assert!(matches!(e, Error::Mapping { .. }), "{e:?}");
    let account = Account {
        id: 7,
        owner: "o\0".into(),
        balance: 0,
        external_ref: None,
        cached: None,
    };
    let e = uow.repo::<Account>().insert(&account).await.unwrap_err();
    assert_eq!(field_of(&e), "owner");
    let e = uow
        .repo::<Item>()
        .update(&Item::new("ok", "pl\0ain", 1), 1)
        .await
        .unwrap_err();
    assert_eq!(field_of(&e), "name");
    // Looked-up ids.
    let nul_id = "a\0b".to_owned();
    let e = uow.repo::<Item>().get(&nul_id).await;
    assert!(matches!(e, Err(Error::InvalidQuery(_))), "{e:?}");
    let e = uow.repo::<Item>().exists(&nul_id).await;
    assert!(matches!(e, Err(Error::InvalidQuery(_))), "{e:?}");
    let e = uow.repo::<Item>().delete(&nul_id, 1).await;
    assert!(matches!(e, Err(Error::InvalidQuery(_))), "{e:?}");
    let e = uow
        .repo::<Item>()
        .get_many(&["ok".to_owned(), nul_id.clone()])
        .await;
    assert!(matches!(e, Err(Error::InvalidQuery(_))), "{e:?}");
    // Operands.
    let caps = store.capabilities().clone();
    let mut specs = vec![
        field("name").eq("a\0b"),
        field("id").eq("a\0b"),
        field("name").ne("\0"),
        field("name").is_in(["ab", "a\0b"]),
        field("name").between("a", "a\0"),
        field("name").contains("a\0b"),
        field("name").icontains("\0"),
        field("name").starts_with("a\0"),
        field("name").ends_with("\0b"),
        field("name").like("a\0%"),
        field("name").ilike("%\0"),
        field("meta").json_has_key("k\0"),
        Spec::from_json(r#"{"op":"contains","field":"name","value":"a\u0000b"}"#).unwrap(),
        Spec::from_json(r#"{"op":"eq","field":"name","value":"a\u0000b"}"#).unwrap(),
    ];
    if caps.regex {
        specs.push(field("name").regex("a\0b"));
    }
    if caps.json_contains {
        specs.push(field("meta").json_contains(json!({"k": "\u{0}"})));
    }
    for spec in specs {
        let e = uow.repo::<Item>().count(&spec).await;
        assert!(matches!(e, Err(Error::InvalidQuery(_))), "{spec:?}: {e:?}");
    }
    // Nothing above reached the database: the unit of work commits, and nothing changed.
    uow.repo::<Item>()
        .insert(&Item::new("fine", "fine", 3))
        .await
        .unwrap();
    uow.commit().await.unwrap();
    assert_eq!(get_item(store, "ok").await.unwrap().name, "plain");
    assert!(get_item(store, "fine").await.is_some());
    let mut uow = store.read().await.unwrap();
    assert_eq!(uow.repo::<Item>().count(&Spec::all()).await.unwrap(), 3);
    uow.commit().await.unwrap();
}

/// `like` and its literal forms compare U+FFFD, U+FFFE and U+FFFF exactly (SQLite's LIKE
/// and GLOB alone read the last two as the first).
pub async fn like_operators_compare_noncharacters_exactly(db: &TestDb) {
    let store = setup(db).await;
    let rows = [
        ("u1", "\u{FFFD}"),
        ("u2", "\u{FFFE}"),
        ("u3", "\u{FFFF}"),
        ("u4", "a\u{FFFF}b"),
        ("u5", "A\u{FFFD}"),
        ("u6", "plain"),
    ];
    let items: Vec<Item> = rows.iter().map(|(id, n)| Item::new(id, n, 1)).collect();
    insert_items(store, &items).await;
    let cases = vec![
        (field("name").contains("\u{FFFF}"), vec!["u3", "u4"]),
        (field("name").contains("\u{FFFD}"), vec!["u1", "u5"]),
        (field("name").starts_with("\u{FFFE}"), vec!["u2"]),
        (field("name").ends_with("\u{FFFD}"), vec!["u1", "u5"]),
        (field("name").like("a\u{FFFF}_"), vec!["u4"]),
        (field("name").like("%\u{FFFE}%"), vec!["u2"]),
        (field("name").ilike("a\u{FFFD}"), vec!["u5"]),
        (field("name").icontains("A\u{FFFF}"), vec!["u4"]),
        (field("name").eq("\u{FFFF}"), vec!["u3"]),
        (field("name").like("_"), vec!["u1", "u2", "u3"]),
        (
            field("name").contains("\u{FFFF}").not(),
            vec!["u1", "u2", "u5", "u6"],
        ),
    ];
    let mut uow = store.read().await.unwrap();
    for (spec, expected) in cases {
        let page = uow
            .repo::<Item>()
            .find(&Query::new(spec.clone()).with_limit(100))
            .await
            .unwrap();
        assert_eq!(ids(&page.items), expected, "{spec:?}");
    }
    uow.commit().await.unwrap();
}

// ---------------------------------------------------------------------------------------
// ordering and pagination

fn many_items(n: usize) -> Vec<Item> {
    (0..n)
        .map(|i| {
            let i64i = i64::try_from(i).unwrap();
            Item {
                id: format!("m{i:03}"),
                name: ["kiwi", "Lime", "apple", "fig", "date"][i % 5].into(),
                qty: i64i % 7,
                price: (i % 4 != 0).then(|| f64::from(u32::try_from(i % 9).unwrap()) / 2.0),
                active: i % 3 == 0,
                tag: (i % 5 != 1).then(|| format!("t{}", i % 3)),
                meta: None,
                note: String::new(),
            }
        })
        .collect()
}

/// Multi-key ordering with a total tie-break on id, nulls placed as asked.
pub async fn find_orders_by_several_keys_with_id_tie_break(db: &TestDb) {
    let store = setup(db).await;
    let data = many_items(40);
    insert_items(store, &data).await;
    let mut uow = store.read().await.unwrap();
    let q = Query::all()
        .order_by(Order::asc("qty"))
        .order_by(Order::desc("price").with_nulls(larder::Nulls::Last))
        .with_limit(1000);
    let got = uow.repo::<Item>().find(&q).await.unwrap();
    let mut expected = data.clone();
    expected.sort_by(|a, b| {
        a.qty
            .cmp(&b.qty)
            .then_with(|| match (a.price, b.price) {
                (None, None) => std::cmp::Ordering::Equal,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (Some(_), None) => std::cmp::Ordering::Less,
                (Some(x), Some(y)) => y.partial_cmp(&x).unwrap(),
            })
            .then_with(|| a.id.cmp(&b.id))
    });
    let expected_ids: Vec<String> = expected.into_iter().map(|i| i.id).collect();
    assert_eq!(ids(&got.items), expected_ids);
    // Text orders byte-wise: uppercase before lowercase.
    let q = Query::all().order_by(Order::asc("name")).with_limit(1);
    let first = uow.repo::<Item>().find(&q).await.unwrap();
    assert_eq!(first.items[0].name, "Lime");
}

fn orderings() -> Vec<Vec<Order>> {
    use larder::Nulls;
    vec![
        vec![],
        vec![Order::asc("name")],
        vec![Order::desc("price")],
        vec![Order::asc("price").with_nulls(Nulls::First)],
        vec![Order::asc("tag"), Order::desc("qty")],
        vec![
            Order::desc("tag").with_nulls(Nulls::Last),
            Order::asc("price"),
        ],
        vec![Order::desc("active"), Order::desc("id")],
    ]
}

/// Keyset pages visit every matching row exactly once, in the full query's order, for
/// ascending, descending and nullable keys.
pub async fn keyset_pagination_visits_every_row_once(db: &TestDb) {
    let store = setup(db).await;
    insert_items(store, &many_items(57)).await;
    let mut uow = store.read().await.unwrap();
    for order in orderings() {
        for filter in [Spec::all(), field("qty").ne(3)] {
            let base = Query {
                filter: filter.clone(),
                order: order.clone(),
                ..Query::default()
            };
            let full = uow
                .repo::<Item>()
                .find(&base.clone().with_limit(1000))
                .await
                .unwrap();
            assert!(full.next.is_none());
            let mut seen = Vec::new();
            let mut q = base.clone().with_limit(7);
            loop {
                let page = uow.repo::<Item>().find(&q).await.unwrap();
                assert!(page.items.len() <= 7);
                seen.extend(ids(&page.items));
                match page.next {
                    Some(c) => q = base.clone().with_limit(7).with_after(c),
                    None => break,
                }
            }
            assert_eq!(seen, ids(&full.items), "order {order:?} filter {filter:?}");
        }
    }
}

/// Offset pages equal keyset pages.
pub async fn offset_pagination_matches_keyset_pages(db: &TestDb) {
    let store = setup(db).await;
    insert_items(store, &many_items(23)).await;
    let mut uow = store.read().await.unwrap();
    let base = Query::all().order_by(Order::desc("price"));
    let full = uow
        .repo::<Item>()
        .find(&base.clone().with_limit(100))
        .await
        .unwrap();
    let mut seen = Vec::new();
    for page in 0..5u64 {
        let p = uow
            .repo::<Item>()
            .find(&base.clone().with_limit(5).with_offset(page * 5))
            .await
            .unwrap();
        seen.extend(ids(&p.items));
    }
    assert_eq!(seen, ids(&full.items));
    let e = uow
        .repo::<Item>()
        .find(&base.clone().with_offset(1).with_after("x"))
        .await;
    assert!(matches!(e, Err(Error::InvalidQuery(_))), "{e:?}");
}

/// The page-size cap is enforced with a typed error.
pub async fn page_size_over_the_cap_is_rejected(db: &TestDb) {
    let store = setup(db).await;
    let mut uow = store.read().await.unwrap();
    let cap = store.config().limits.max_page_size;
    let e = uow
        .repo::<Item>()
        .find(&Query::all().with_limit(cap + 1))
        .await;
    assert!(
        matches!(
            e,
            Err(Error::LimitExceeded {
                what: "page size",
                ..
            })
        ),
        "{e:?}"
    );
    let e = uow.repo::<Item>().find(&Query::all().with_limit(0)).await;
    assert!(matches!(e, Err(Error::InvalidQuery(_))), "{e:?}");
}

/// A cursor from another ordering, or garbage, is `InvalidCursor`.
pub async fn foreign_cursor_is_rejected(db: &TestDb) {
    let store = setup(db).await;
    insert_items(store, &many_items(5)).await;
    let mut uow = store.read().await.unwrap();
    let p = uow
        .repo::<Item>()
        .find(&Query::all().order_by(Order::asc("name")).with_limit(2))
        .await
        .unwrap();
    let c = p.next.unwrap();
    let e = uow
        .repo::<Item>()
        .find(&Query::all().order_by(Order::asc("qty")).with_after(c))
        .await;
    assert!(matches!(e, Err(Error::InvalidCursor(_))), "{e:?}");
    for junk in ["", "%%%", "eyJvIjoiMSJ9", &"A".repeat(10_000)] {
        let e = uow
            .repo::<Item>()
            .find(&Query::all().with_after(junk))
            .await;
        assert!(
            matches!(
                e,
                Err(Error::InvalidCursor(_) | Error::LimitExceeded { .. })
            ),
            "{junk:.20}: {e:?}"
        );
    }
}

/// `stream` yields every match in query order.
pub async fn stream_yields_every_match_in_order(db: &TestDb) {
    let store = setup(db).await;
    insert_items(store, &many_items(120)).await;
    let mut uow = store.read().await.unwrap();
    for order in orderings() {
        let q = Query {
            filter: field("qty").ge(2),
            order,
            ..Query::default()
        };
        let full = uow
            .repo::<Item>()
            .find(&q.clone().with_limit(1000))
            .await
            .unwrap();
        let streamed: Vec<String> = uow
            .repo::<Item>()
            .stream(&q)
            .map(|r| r.unwrap().id.clone())
            .collect()
            .await;
        assert_eq!(streamed, ids(&full.items));
    }
}

/// `stream` respects `limit` and starts after a cursor.
pub async fn stream_honours_limit_and_cursor(db: &TestDb) {
    let store = setup(db).await;
    insert_items(store, &many_items(30)).await;
    let mut uow = store.read().await.unwrap();
    let q = Query::all().order_by(Order::asc("name"));
    let first = uow
        .repo::<Item>()
        .find(&q.clone().with_limit(10))
        .await
        .unwrap();
    let rest: Vec<String> = uow
        .repo::<Item>()
        .stream(&q.clone().with_after(first.next.clone().unwrap()))
        .map(|r| r.unwrap().id.clone())
        .collect()
        .await;
    let full = uow
        .repo::<Item>()
        .find(&q.clone().with_limit(100))
        .await
        .unwrap();
    assert_eq!(rest, ids(&full.items)[10..]);
    let limited = uow.repo::<Item>().stream(&q.with_limit(4)).count().await;
    assert_eq!(limited, 4);
}

// ---------------------------------------------------------------------------------------
// deadlines and observability

/// An already expired deadline fails fast with `DeadlineExceeded`.
pub async fn expired_deadline_fails_before_any_io(db: &TestDb) {
    let store = setup(db).await;
    let mut uow = store.read().await.unwrap();
    let past = Deadline::after(Duration::ZERO);
    tokio::time::sleep(Duration::from_millis(2)).await;
    let e = uow
        .repo::<Item>()
        .with_deadline(past)
        .count(&Spec::all())
        .await;
    assert!(matches!(e, Err(Error::DeadlineExceeded { .. })), "{e:?}");
    // Without the per-call deadline the same unit of work works.
    assert_eq!(uow.repo::<Item>().count(&Spec::all()).await.unwrap(), 0);
}

/// A unit-of-work deadline bounds every call; afterwards the store is healthy.
pub async fn uow_deadline_bounds_later_calls_and_store_stays_healthy(db: &TestDb) {
    let store = setup(db).await;
    let mut uow = store
        .begin_with(UowOptions::default().with_timeout(Duration::from_millis(800)))
        .await
        .unwrap();
    uow.repo::<Item>()
        .insert(&Item::new("a", "x", 1))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(900)).await;
    let e = uow.repo::<Item>().insert(&Item::new("b", "x", 1)).await;
    assert!(matches!(e, Err(Error::DeadlineExceeded { .. })), "{e:?}");
    let e = uow.commit().await;
    assert!(matches!(e, Err(Error::DeadlineExceeded { .. })), "{e:?}");
    assert!(get_item(store, "a").await.is_none(), "nothing committed");
    insert_items(store, &[Item::new("c", "x", 1)]).await;
    assert!(get_item(store, "c").await.is_some());
}

/// Every operation produces one audit record with actor, correlation id and outcome.
pub async fn audit_sink_receives_one_record_per_operation(db: &TestDb) {
    let sink = MemoryAuditSink::new();
    let config = StoreConfig {
        audit: Some(Arc::new(sink.clone())),
        ..StoreConfig::default()
    };
    let store = Store::with_config(db.store.backend().clone(), config);
    store.register::<Item>().await.unwrap();
    let mut uow = store
        .begin_with(
            UowOptions::default()
                .with_actor("alice")
                .with_correlation_id("req-1"),
        )
        .await
        .unwrap();
    uow.repo::<Item>()
        .insert(&Item::new("a", "x", 1))
        .await
        .unwrap();
    let _ = uow.repo::<Item>().insert(&Item::new("a", "x", 1)).await;
    uow.repo::<Item>().get(&"a".to_owned()).await.unwrap();
    uow.commit().await.unwrap();
    let recs = sink.records();
    let ops: Vec<(&str, Result<(), &str>)> =
        recs.iter().map(|r| (r.operation, r.outcome)).collect();
    assert_eq!(
        ops,
        [
            ("repository.insert", Ok(())),
            ("repository.insert", Err("already_exists")),
            ("repository.get", Ok(())),
            ("uow.commit", Ok(())),
        ]
    );
    assert!(recs.iter().all(|r| r.actor.as_deref() == Some("alice")));
    assert!(
        recs.iter()
            .all(|r| r.correlation_id.as_deref() == Some("req-1"))
    );
    assert_eq!(recs[0].collection, Some("item"));
    assert_eq!(recs[0].entity_id.as_deref(), Some("a"));
}

/// The suite's basics also pass through an `Arc<dyn Backend>` handed around by value.
pub async fn wrappers_forward_through_arc_dyn_backend(db: &TestDb) {
    let backend: Arc<dyn larder::backend::Backend> = db.store.backend().clone();
    let store = Store::new(backend);
    store.register::<Item>().await.unwrap();
    insert_items(&store, &[Item::new("w", "x", 1)]).await;
    assert!(get_item(&store, "w").await.is_some());
    assert_eq!(store.backend_name(), db.backend);
}

// ---------------------------------------------------------------------------------------
// issue 8: commit tells the truth, deadlines are scoped

/// Whether `id` is committed, read by a fresh unit of work.
async fn committed(store: &Store, id: &str) -> bool {
    get_item(store, id).await.is_some()
}

/// After every kind of failure a caller can swallow inside a unit of work — a duplicate
/// insert, a stale update, a call past its own deadline, a stream dropped mid-way, a
/// stream whose deadline passed — `commit()` returns `Ok` exactly when the unit of work's
/// earlier write is visible afterwards (never `Ok` with the writes gone).
pub async fn commit_ok_means_the_writes_are_visible(db: &TestDb) {
    let store = setup(db).await;
    let many: Vec<Item> = (0..300)
        .map(|i| Item::new(&format!("m{i:04}"), "many", i))
        .collect();
    insert_items(store, &many).await;
    insert_items(store, &[Item::new("dup", "d", 1)]).await;
    for case in 0..5 {
        let id = format!("truth-{case}");
        let mut uow = store.begin().await.unwrap();
        uow.repo::<Item>()
            .insert(&Item::new(&id, "t", 1))
            .await
            .unwrap();
        match case {
            0 => {
                let e = uow.repo::<Item>().insert(&Item::new("dup", "d", 1)).await;
                assert!(matches!(e, Err(Error::AlreadyExists { .. })), "{e:?}");
            }
            1 => {
                let mut stale = uow.repo::<Item>().require(&"dup".to_owned()).await.unwrap();
                stale.version += 7;
                let e = uow.repo::<Item>().save(&mut stale).await;
                assert!(matches!(e, Err(Error::Conflict { .. })), "{e:?}");
            }
            2 => {
                let past = Deadline::after(Duration::ZERO);
                tokio::time::sleep(Duration::from_millis(2)).await;
                let e = uow
                    .repo::<Item>()
                    .with_deadline(past)
                    .count(&Spec::all())
                    .await;
                assert!(matches!(e, Err(Error::DeadlineExceeded { .. })), "{e:?}");
            }
            3 => {
                let q = Query::new(field("name").eq("many"));
                let mut s = uow.repo::<Item>().stream(&q);
                let _ = s.next().await.unwrap().unwrap();
                drop(s);
            }
            _ => {
                let q = Query::new(field("name").eq("many"));
                let mut s = uow
                    .repo::<Item>()
                    .with_deadline(Deadline::after(Duration::from_millis(30)))
                    .stream(&q);
                let _ = s.next().await;
                tokio::time::sleep(Duration::from_millis(60)).await;
                while let Some(r) = s.next().await {
                    if r.is_err() {
                        break;
                    }
                }
                drop(s);
            }
        }
        let c = uow.commit().await;
        let visible = committed(store, &id).await;
        assert_eq!(
            c.is_ok(),
            visible,
            "case {case}: commit returned {c:?} but the write is {}",
            if visible { "visible" } else { "gone" }
        );
    }
}

/// A per-call deadline bounds that call only: a commit after it passed succeeds, on
/// every backend; the unit of work's own deadline still bounds the commit.
pub async fn per_call_deadline_does_not_leak_into_commit(db: &TestDb) {
    let store = setup(db).await;
    let mut uow = store.begin().await.unwrap();
    uow.repo::<Item>()
        .insert(&Item::new("a", "x", 1))
        .await
        .unwrap();
    let got = uow
        .repo::<Item>()
        .with_deadline(Deadline::after(Duration::from_millis(40)))
        .get(&"a".to_owned())
        .await
        .unwrap();
    assert!(got.is_some());
    tokio::time::sleep(Duration::from_millis(80)).await;
    // Later calls without a per-call deadline are unbounded too.
    assert_eq!(uow.repo::<Item>().count(&Spec::all()).await.unwrap(), 1);
    let _ = uow
        .repo::<Item>()
        .with_deadline(Deadline::after(Duration::from_millis(40)))
        .count(&Spec::all())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(80)).await;
    uow.commit()
        .await
        .expect("commit after a per-call deadline passed");
    assert!(committed(store, "a").await);

    // The unit of work's own deadline bounds the commit, on every backend.
    let mut uow = store
        .begin_with(UowOptions::default().with_timeout(Duration::from_millis(300)))
        .await
        .unwrap();
    uow.repo::<Item>()
        .insert(&Item::new("b", "x", 1))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let e = uow.commit().await;
    assert!(matches!(e, Err(Error::DeadlineExceeded { .. })), "{e:?}");
    assert!(!committed(store, "b").await);
}

// ---------------------------------------------------------------------------------------
// values at their limits

async fn setup_values(db: &TestDb) -> &Store {
    let store = setup(db).await;
    store.register::<Sample>().await.expect("register samples");
    store
        .register::<Measurement>()
        .await
        .expect("register measurements");
    store
}

/// Finite floats at the edges of `f64` (and some whose decimal form is long).
const EXTREME_FLOATS: &[f64] = &[
    f64::MAX,
    f64::MIN,
    f64::MIN_POSITIVE,
    -f64::MIN_POSITIVE,
    5e-324,
    -5e-324,
    f64::from_bits(0x000f_ffff_ffff_ffff), // largest subnormal
    3.402_823_466_385_288_6e38,            // f32::MAX widened
    -2.418_261_144_083_014_7e92,
    1e300,
    0.1 + 0.2,
    1e16,
    -9_007_199_254_740_994.0,
    1.5,
];

fn bits_eq(a: f64, b: f64) -> bool {
    a.to_bits() == b.to_bits()
}

/// NaN and ±infinity are refused on write with a typed error before any SQL, in every
/// kind of float field (mapped column, document column, document body, inside JSON), on
/// insert and update; nothing is stored and the unit of work stays usable.
pub async fn non_finite_floats_are_rejected_on_write(db: &TestDb) {
    let store = setup_values(db).await;
    let mut uow = store.begin().await.unwrap();
    for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        let samples = [
            Sample::new("s", bad),
            Sample {
                y: Some(bad),
                ..Sample::new("s", 1.0)
            },
            Sample {
                small: f32::NAN,
                ..Sample::new("s", 1.0)
            },
            Sample {
                series: larder::Json(vec![1.0, bad]),
                ..Sample::new("s", 1.0)
            },
        ];
        for s in &samples {
            let e = uow.repo::<Sample>().insert(s).await;
            assert!(
                matches!(e, Err(Error::TypeMismatch { .. })),
                "{bad} in {s:?}: {e:?}"
            );
        }
        let measurements = [
            Measurement::new("m", bad),
            Measurement {
                y: Some(bad),
                ..Measurement::new("m", 1.0)
            },
            Measurement {
                samples: vec![0.5, bad],
                ..Measurement::new("m", 1.0)
            },
        ];
        for m in &measurements {
            let e = uow.repo::<Measurement>().insert(m).await;
            let Err(Error::TypeMismatch { field, .. }) = &e else {
                panic!("{bad} in {m:?}: {e:?}");
            };
            assert!(["x", "y", "samples[1]"].contains(&field.as_str()), "{e:?}");
        }
        let item = Item {
            price: Some(bad),
            ..Item::new("i", "n", 1)
        };
        let e = uow.repo::<Item>().insert(&item).await;
        assert!(matches!(e, Err(Error::TypeMismatch { .. })), "{e:?}");
    }
    // The unit of work is still usable (no statement failed), and updates are checked too.
    uow.repo::<Sample>()
        .insert(&Sample::new("ok", 1.0))
        .await
        .unwrap();
    let e = uow
        .repo::<Sample>()
        .update(&Sample::new("ok", f64::NAN), 1)
        .await;
    assert!(matches!(e, Err(Error::TypeMismatch { .. })), "{e:?}");
    uow.commit().await.unwrap();
    let mut uow = store.read().await.unwrap();
    assert_eq!(uow.repo::<Sample>().count(&Spec::all()).await.unwrap(), 1);
    assert_eq!(
        uow.repo::<Measurement>().count(&Spec::all()).await.unwrap(),
        0
    );
    assert_eq!(uow.repo::<Item>().count(&Spec::all()).await.unwrap(), 0);
    let got = uow.repo::<Sample>().require(&"ok".into()).await.unwrap();
    assert!(bits_eq(got.x, 1.0) && got.version == 1);
}

/// Every finite float reads back bit for bit (mapped columns, document columns, document
/// bodies, JSON fields, `f32`), and `eq` on it matches the row, built in Rust or through
/// the JSON form of specifications.
pub async fn extreme_finite_floats_read_back_exactly(db: &TestDb) {
    let store = setup_values(db).await;
    let mut uow = store.begin().await.unwrap();
    for (i, &x) in EXTREME_FLOATS.iter().enumerate() {
        let id = format!("f{i:02}");
        #[allow(clippy::cast_possible_truncation)]
        let small = if x.abs() <= f64::from(f32::MAX) {
            x as f32
        } else {
            f32::MIN_POSITIVE
        };
        uow.repo::<Sample>()
            .insert(&Sample {
                y: Some(-x),
                small,
                series: larder::Json(vec![x, -x]),
                ..Sample::new(&id, x)
            })
            .await
            .unwrap();
        uow.repo::<Measurement>()
            .insert(&Measurement {
                y: Some(-x),
                small,
                samples: vec![x, -x],
                ..Measurement::new(&id, x)
            })
            .await
            .unwrap();
        uow.repo::<Item>()
            .insert(&Item {
                price: Some(x),
                ..Item::new(&id, "n", 1)
            })
            .await
            .unwrap();
    }
    uow.commit().await.unwrap();
    let mut uow = store.read().await.unwrap();
    for (i, &x) in EXTREME_FLOATS.iter().enumerate() {
        let id = format!("f{i:02}");
        let s = uow.repo::<Sample>().require(&id).await.unwrap();
        assert!(bits_eq(s.x, x) && bits_eq(s.y.unwrap(), -x), "{x:e}: {s:?}");
        assert!(
            bits_eq(s.series.0[0], x) && bits_eq(s.series.0[1], -x),
            "{s:?}"
        );
        let m = uow.repo::<Measurement>().require(&id).await.unwrap();
        assert!(bits_eq(m.x, x) && bits_eq(m.y.unwrap(), -x), "{x:e}: {m:?}");
        assert!(
            bits_eq(m.samples[0], x) && bits_eq(m.samples[1], -x),
            "{m:?}"
        );
        assert_eq!(m.small.to_bits(), s.small.to_bits(), "{x:e}");
        let it = uow.repo::<Item>().require(&id).await.unwrap();
        assert!(bits_eq(it.price.unwrap(), x), "{x:e}: {it:?}");

        let built = field("x").eq(x);
        let json = Spec::from_json(&serde_json::to_string(&built).unwrap()).unwrap();
        for spec in [&built, &json] {
            let hits = uow.repo::<Sample>().find(&Query::new(spec.clone())).await;
            assert_eq!(
                ids_of(&hits.unwrap().items),
                [id.as_str()],
                "{x:e} {spec:?}"
            );
            let hits = uow
                .repo::<Measurement>()
                .find(&Query::new(spec.clone()))
                .await;
            assert_eq!(
                ids_of(&hits.unwrap().items),
                [id.as_str()],
                "{x:e} {spec:?}"
            );
        }
    }
}

fn ids_of<T: larder::Entity<Id = String>>(items: &[larder::Versioned<T>]) -> Vec<String> {
    items.iter().map(|v| v.id()).collect()
}

/// Negative zero is stored as `0.0` on every backend (SQLite `REAL` columns and
/// PostgreSQL `jsonb` cannot hold it), in columns, bodies and JSON fields alike.
pub async fn negative_zero_is_stored_as_positive_zero(db: &TestDb) {
    let store = setup_values(db).await;
    let mut uow = store.begin().await.unwrap();
    uow.repo::<Sample>()
        .insert(&Sample {
            y: Some(-0.0),
            small: -0.0,
            meta: Some(json!({"z": -0.0})),
            series: larder::Json(vec![-0.0]),
            ..Sample::new("z", -0.0)
        })
        .await
        .unwrap();
    uow.repo::<Measurement>()
        .insert(&Measurement {
            y: Some(-0.0),
            small: -0.0,
            samples: vec![-0.0],
            ..Measurement::new("z", -0.0)
        })
        .await
        .unwrap();
    uow.commit().await.unwrap();
    let mut uow = store.read().await.unwrap();
    let positive = |f: f64| bits_eq(f, 0.0);
    let s = uow.repo::<Sample>().require(&"z".into()).await.unwrap();
    assert!(positive(s.x) && positive(s.y.unwrap()), "{s:?}");
    assert!(
        positive(f64::from(s.small)) && positive(s.series.0[0]),
        "{s:?}"
    );
    let z = s.meta.as_ref().and_then(|m| m["z"].as_f64()).unwrap();
    assert!(positive(z), "{s:?}");
    let m = uow
        .repo::<Measurement>()
        .require(&"z".into())
        .await
        .unwrap();
    assert!(positive(m.x) && positive(m.y.unwrap()), "{m:?}");
    assert!(
        positive(f64::from(m.small)) && positive(m.samples[0]),
        "{m:?}"
    );
    for spec in [field("x").eq(0.0), field("x").eq(-0.0)] {
        assert_eq!(uow.repo::<Sample>().count(&spec).await.unwrap(), 1);
        assert_eq!(uow.repo::<Measurement>().count(&spec).await.unwrap(), 1);
    }
}

/// Keyset pagination by a float key whose decimal form needs all 17 digits terminates and
/// visits every row once (three equal keys, descending, one row per page).
pub async fn keyset_pagination_over_float_keys_terminates(db: &TestDb) {
    let store = setup_values(db).await;
    let x = f64::from(f32::MAX);
    let mut uow = store.begin().await.unwrap();
    for id in ["a", "b", "c"] {
        uow.repo::<Sample>()
            .insert(&Sample::new(id, x))
            .await
            .unwrap();
        uow.repo::<Measurement>()
            .insert(&Measurement::new(id, x))
            .await
            .unwrap();
    }
    uow.commit().await.unwrap();
    let mut uow = store.read().await.unwrap();
    let base = Query::all().order_by(Order::desc("x")).with_limit(1);
    let mut seen = (Vec::new(), Vec::new());
    let mut q = base.clone();
    for _ in 0..5 {
        let page = uow.repo::<Sample>().find(&q).await.unwrap();
        seen.0.extend(ids_of(&page.items));
        match page.next {
            Some(c) => q = base.clone().with_after(c),
            None => break,
        }
    }
    let mut q = base.clone();
    for _ in 0..5 {
        let page = uow.repo::<Measurement>().find(&q).await.unwrap();
        seen.1.extend(ids_of(&page.items));
        match page.next {
            Some(c) => q = base.clone().with_after(c),
            None => break,
        }
    }
    assert_eq!(seen.0, ["a", "b", "c"]);
    assert_eq!(seen.1, ["a", "b", "c"]);
}

/// Text ids and indexed text fields longer than `MAX_INDEXED_TEXT_BYTES` are
/// `LimitExceeded` on every backend, before SQL; at the limit they are stored; text that is
/// not indexed is bounded only by the record size.
pub async fn long_ids_and_indexed_text_are_limit_exceeded(db: &TestDb) {
    let store = setup_values(db).await;
    let max = larder::MAX_INDEXED_TEXT_BYTES;
    // Incompressible text, so PostgreSQL's index cannot shrink it below its page limit.
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut text = |len: usize| -> String {
        (0..len)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                char::from(b'!' + u8::try_from(seed % 94).unwrap())
            })
            .collect()
    };
    let (at_limit, over) = (text(max), text(max + 1));
    let long_note = text(16 * 1024);
    let mut uow = store.begin().await.unwrap();
    let too_long = |e: &larder::Result<larder::Versioned<()>>| {
        matches!(e, Err(Error::LimitExceeded { limit, actual, .. })
            if usize::try_from(*limit).unwrap() == max && usize::try_from(*actual).unwrap() == max + 1)
    };
    let e = uow.repo::<Item>().insert(&Item::new(&over, "n", 1)).await;
    assert!(too_long(&e), "{e:?}");
    let e = uow.repo::<Item>().insert(&Item::new("a", &over, 1)).await;
    assert!(too_long(&e), "document text fields are indexed: {e:?}");
    let e = uow
        .repo::<Item>()
        .insert(&Item {
            tag: Some(over.clone()),
            ..Item::new("a", "n", 1)
        })
        .await;
    assert!(too_long(&e), "{e:?}");
    let e = uow
        .repo::<Sample>()
        .insert(&Sample {
            label: Some(over.clone()),
            ..Sample::new("a", 1.0)
        })
        .await;
    assert!(too_long(&e), "{e:?}");
    let e = uow.repo::<Sample>().insert(&Sample::new(&over, 1.0)).await;
    assert!(too_long(&e), "{e:?}");
    // Multi-byte characters count in bytes.
    let wide = "é".repeat(max / 2 + 1);
    let e = uow.repo::<Item>().insert(&Item::new("w", &wide, 1)).await;
    assert!(matches!(e, Err(Error::LimitExceeded { .. })), "{e:?}");
    // At the limit, and unindexed text far over it, are stored.
    uow.repo::<Item>()
        .insert(&Item {
            tag: Some(at_limit.clone()),
            note: long_note.clone(),
            ..Item::new(&at_limit, &at_limit, 1)
        })
        .await
        .unwrap();
    uow.repo::<Sample>()
        .insert(&Sample {
            label: Some(at_limit.clone()),
            note: long_note.clone(),
            ..Sample::new(&at_limit, 1.0)
        })
        .await
        .unwrap();
    uow.commit().await.unwrap();
    let mut uow = store.read().await.unwrap();
    let it = uow.repo::<Item>().require(&at_limit).await.unwrap();
    assert_eq!((&it.name, &it.note), (&at_limit, &long_note));
    let s = uow.repo::<Sample>().require(&at_limit).await.unwrap();
    assert_eq!((s.label.as_ref(), &s.note), (Some(&at_limit), &long_note));
    assert_eq!(uow.repo::<Item>().count(&Spec::all()).await.unwrap(), 1);
}

/// `get_many` with an id given several times returns that entity once, at its first
/// position, on every backend.
pub async fn get_many_with_duplicate_ids_returns_each_entity_once(db: &TestDb) {
    let store = setup(db).await;
    insert_items(store, &[Item::new("a", "1", 1), Item::new("b", "2", 2)]).await;
    let mut uow = store.read().await.unwrap();
    let got = uow
        .repo::<Item>()
        .get_many(&["b".into(), "a".into(), "b".into(), "x".into(), "a".into()])
        .await
        .unwrap();
    assert_eq!(ids(&got), ["b", "a"]);
    let got = uow.repo::<Account>().get_many(&[7, 7, 7]).await.unwrap();
    assert!(got.is_empty());
}

/// JSON `null` in a nullable JSON field is stored as SQL `NULL`: it reads back as `None`
/// and matches `is_null` (mapped columns and documents alike). In a non-nullable JSON
/// field it is a value: it reads back as JSON `null` and never matches `is_null`.
pub async fn json_null_in_a_nullable_json_field_is_sql_null(db: &TestDb) {
    let store = setup_values(db).await;
    let mut uow = store.begin().await.unwrap();
    uow.repo::<Sample>()
        .insert(&Sample {
            meta: Some(serde_json::Value::Null),
            attrs: serde_json::Value::Null,
            ..Sample::new("jn", 1.0)
        })
        .await
        .unwrap();
    uow.repo::<Sample>()
        .insert(&Sample {
            meta: Some(json!({"a": 1})),
            ..Sample::new("jv", 1.0)
        })
        .await
        .unwrap();
    uow.repo::<Item>()
        .insert(&Item {
            meta: Some(serde_json::Value::Null),
            ..Item::new("jn", "n", 1)
        })
        .await
        .unwrap();
    uow.repo::<Item>()
        .insert(&Item {
            meta: Some(json!([1])),
            ..Item::new("jv", "n", 1)
        })
        .await
        .unwrap();
    uow.commit().await.unwrap();
    let mut uow = store.read().await.unwrap();
    let s = uow.repo::<Sample>().require(&"jn".into()).await.unwrap();
    assert_eq!((&s.meta, &s.attrs), (&None, &serde_json::Value::Null));
    let it = uow.repo::<Item>().require(&"jn".into()).await.unwrap();
    assert_eq!(it.meta, None);
    let q = Query::new(field("meta").is_null());
    let hits = uow.repo::<Sample>().find(&q).await.unwrap();
    assert_eq!(ids_of(&hits.items), ["jn"]);
    let hits = uow.repo::<Item>().find(&q).await.unwrap();
    assert_eq!(ids(&hits.items), ["jn"]);
    let n = uow
        .repo::<Sample>()
        .count(&field("attrs").is_null())
        .await
        .unwrap();
    assert_eq!(n, 0, "JSON null in a required JSON field is a value");
}

// ---------------------------------------------------------------------------------------
// schema drift and registration

/// `register` checks an existing table against the entity: a new field, another id type,
/// a retyped field, a removed required field, another storage layout are each a typed
/// `SchemaMismatch` naming the column and asking for a migration; nothing panics, an
/// unregistered new version is refused as typed errors (on SQLite an unknown column is
/// never read as a string literal), and the existing data is untouched.
pub async fn register_detects_schema_drift(db: &TestDb) {
    use crate::entities::{
        DriftAddedField, DriftDocument, DriftIntId, DriftRemoved, DriftRetyped, DriftV1,
    };
    let store = &db.store;
    store.register::<DriftV1>().await.expect("register v1");
    let rows = [("a", "open"), ("b", "closed")].map(|(id, status)| DriftV1 {
        id: id.into(),
        status: status.into(),
        note: None,
    });
    let mut uow = store.begin().await.unwrap();
    for r in &rows {
        uow.repo::<DriftV1>().insert(r).await.unwrap();
    }
    uow.commit().await.unwrap();

    let drifted = |what: &str, column: &str, r: larder::Result<()>| match r {
        Err(e @ Error::SchemaMismatch { .. }) => {
            let Error::SchemaMismatch {
                ref table,
                ref differences,
                ..
            } = e
            else {
                unreachable!()
            };
            assert_eq!(table, "drift_orders", "{what}: {e}");
            assert!(
                differences.contains(&format!("`{column}`")),
                "{what}: the difference should name `{column}`: {e}"
            );
            let text = e.to_string();
            assert!(text.contains("larder migrate new"), "{what}: {text}");
            assert!(!text.chars().any(char::is_control), "{what}: {text:?}");
        }
        other => panic!("{what}: expected a schema mismatch naming `{column}`, got {other:?}"),
    };
    drifted(
        "a new indexed field",
        "total",
        store.register::<DriftAddedField>().await,
    );
    drifted("an integer id", "id", store.register::<DriftIntId>().await);
    drifted(
        "a retyped field",
        "status",
        store.register::<DriftRetyped>().await,
    );
    drifted(
        "a removed required field",
        "status",
        store.register::<DriftRemoved>().await,
    );
    drifted(
        "document storage",
        "body",
        store.register::<DriftDocument>().await,
    );

    // The new version used anyway: typed errors, never a wrong answer or a panic. (On
    // SQLite with double-quoted string literals, `"total" > 1` compared the text 'total'
    // and counted every row.)
    let mut uow = store.read().await.unwrap();
    let n = uow
        .repo::<DriftAddedField>()
        .count(&field("total").gt(1))
        .await;
    assert!(
        matches!(n, Err(Error::SchemaMismatch { .. })),
        "count on a column the table lacks: {n:?}"
    );
    drop(uow);
    let mut uow = store.read().await.unwrap();
    let found = uow
        .repo::<DriftAddedField>()
        .find(&Query::new(field("total").eq(3)))
        .await;
    assert!(
        matches!(found, Err(Error::SchemaMismatch { .. })),
        "find on a column the table lacks: {:?}",
        found.map(|p| p.items.len())
    );
    drop(uow);
    let mut uow = store.begin().await.unwrap();
    let ins = uow
        .repo::<DriftAddedField>()
        .insert(&DriftAddedField {
            id: "c".into(),
            status: "open".into(),
            note: None,
            total: 3,
        })
        .await;
    assert!(
        matches!(ins, Err(Error::SchemaMismatch { .. })),
        "insert into a column the table lacks: {ins:?}"
    );
    drop(uow);

    // v1 still matches, and its data is untouched.
    store.register::<DriftV1>().await.expect("v1 still matches");
    let mut uow = store.read().await.unwrap();
    let got = uow
        .repo::<DriftV1>()
        .get_many(&["a".to_owned(), "b".to_owned()])
        .await
        .unwrap();
    let got: Vec<DriftV1> = got.into_iter().map(|v| v.value).collect();
    assert_eq!(got, rows.to_vec());
    assert_eq!(
        uow.repo::<DriftV1>()
            .count(&field("status").eq("open"))
            .await
            .unwrap(),
        1
    );
    uow.commit().await.unwrap();
}

/// Every repository call on an entity that was never registered is a typed
/// `NotRegistered` that says to call `store.register::<T>()` — on every backend, memory
/// included; after registering, the same calls work.
pub async fn using_an_unregistered_entity_is_a_typed_error(db: &TestDb) {
    let store = &db.store;
    let unregistered = |what: &str, r: larder::Result<()>| match r {
        Err(e @ Error::NotRegistered { .. }) => {
            let text = e.to_string();
            assert!(
                text.contains("call `store.register::<T>()`") && text.contains("items"),
                "{what}: {text}"
            );
        }
        other => panic!("{what}: expected NotRegistered, got {other:?}"),
    };
    let id = "a".to_owned();
    let mut uow = store.begin().await.unwrap();
    let r = uow.repo::<Item>().insert(&Item::new("a", "alpha", 1)).await;
    unregistered("insert", r.map(|_| ()));
    drop(uow);
    let mut uow = store.begin().await.unwrap();
    let r = uow
        .repo::<Item>()
        .update(&Item::new("a", "alpha", 2), 1)
        .await;
    unregistered("update", r.map(|_| ()));
    drop(uow);
    let mut uow = store.begin().await.unwrap();
    unregistered("delete", uow.repo::<Item>().delete(&id, 1).await);
    drop(uow);
    let mut uow = store.read().await.unwrap();
    let r = uow.repo::<Item>().get(&id).await;
    unregistered("get", r.map(|_| ()));
    drop(uow);
    let mut uow = store.read().await.unwrap();
    let r = uow.repo::<Item>().count(&Spec::all()).await;
    unregistered("count", r.map(|_| ()));
    drop(uow);
    let mut uow = store.read().await.unwrap();
    let r = uow.repo::<Item>().find(&Query::all()).await;
    unregistered("find", r.map(|_| ()));
    drop(uow);
    let mut uow = store.read().await.unwrap();
    let first = uow.repo::<Item>().stream(&Query::all()).next().await;
    unregistered(
        "stream",
        first
            .expect("a stream on an unregistered entity yields its error")
            .map(|_| ()),
    );
    drop(uow);

    setup(db).await;
    insert_items(store, &[Item::new("a", "alpha", 1)]).await;
    assert_eq!(get_item(store, "a").await.unwrap().name, "alpha");
}
