//! Migrations embedded at compile time are parsed and applied like a directory.

use larder::migrate::{self, Migrator};

#[tokio::test]
async fn embedded_modules_apply_in_dependency_order() {
    let modules = larder::embed_migrations!("tests/fixtures/db");
    assert_eq!(modules.len(), 2);
    let set = migrate::set_from_embedded(modules, migrate::Dialect::Sqlite).unwrap();
    let order: Vec<&str> = set.modules().iter().map(|m| m.name.as_str()).collect();
    assert_eq!(order, ["larder", "customers", "billing"]);
    let path = std::env::temp_dir().join(format!("larder-embedded-{}.db", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let store = larder::open(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    let mut driver = migrate::driver(&store).await.unwrap();
    let migrator = Migrator::new(set);
    let report = migrator
        .up(driver.as_mut(), None, &mut |_, _, _| {})
        .await
        .unwrap();
    // larder's four built-in migrations (meta, event store, outbox, blob references) and the two modules' own.
    assert_eq!(report.applied.len(), 6);
    let v = migrator.verify(driver.as_mut()).await.unwrap();
    assert!(v.problems.is_empty() && v.pending == 0, "{v:?}");
    drop(driver);
    store.close().await;
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
}
