//! The blocking facade has the async semantics: commit on commit, rollback on drop and on
//! error, streaming as an iterator.

use larder::blocking::Store;
use larder::{Entity, Error, Query, Spec, field};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Entity)]
#[larder(table = "notes", document)]
struct Note {
    id: i64,
    #[larder(indexed)]
    text: String,
}

fn note(id: i64, text: &str) -> Note {
    Note {
        id,
        text: text.into(),
    }
}

fn sqlite() -> (Store, std::path::PathBuf) {
    let path = std::env::temp_dir().join(format!("larder-blocking-{}.db", std::process::id()));
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    let store = Store::open(&format!("sqlite://{}", path.display())).unwrap();
    store.register::<Note>().unwrap();
    (store, path)
}

#[test]
fn blocking_units_of_work_commit_roll_back_and_stream() {
    let (store, path) = sqlite();
    // Dropped: rolled back.
    {
        let mut uow = store.begin().unwrap();
        uow.repo::<Note>().insert(&note(1, "dropped")).unwrap();
    }
    // Committed.
    let mut uow = store.begin().unwrap();
    for i in 2..12 {
        uow.repo::<Note>().insert(&note(i, "kept")).unwrap();
    }
    uow.commit().unwrap();
    // Err in transaction(): rolled back.
    let r: Result<(), Error> = store.transaction(|uow| {
        uow.repo::<Note>().insert(&note(99, "failed"))?;
        Err(Error::callback("test", "no"))
    });
    assert!(r.is_err());
    // Conflicts are typed.
    let mut uow = store.begin().unwrap();
    let e = uow.repo::<Note>().update(&note(2, "x"), 7);
    assert!(
        matches!(
            e,
            Err(Error::Conflict {
                expected: 7,
                actual: Some(1),
                ..
            })
        ),
        "{e:?}"
    );
    uow.rollback().unwrap();

    let mut uow = store.read().unwrap();
    assert_eq!(uow.repo::<Note>().count(&Spec::all()).unwrap(), 10);
    assert!(uow.repo::<Note>().get(&1).unwrap().is_none());
    let ids: Vec<i64> = uow
        .repo::<Note>()
        .stream(&Query::new(field("text").eq("kept")))
        .map(|n| n.unwrap().id)
        .collect();
    assert_eq!(ids, (2..12).collect::<Vec<_>>());
    drop(uow);
    store.close();
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
}
