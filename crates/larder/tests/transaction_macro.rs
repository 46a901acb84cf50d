//! `larder::transaction!`: the body runs in a unit of work that commits on `Ok`, rolls back
//! on `Err`, retries transient failures, and its future is `Send` (spawned here).

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use larder::{Entity, Error, TransientKind};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Entity)]
#[larder(table = "notes", document)]
struct Note {
    id: String,
    text: String,
}

#[tokio::test]
async fn commits_rolls_back_retries_and_can_be_spawned() {
    let store = larder::open("memory://").await.unwrap();
    store.register::<Note>().await.unwrap();

    // Spawned: the future is Send; captures are used by reference inside the body.
    let s = store.clone();
    let text = String::from("hello");
    let attempts = Arc::new(AtomicU32::new(0));
    let a = attempts.clone();
    let n = tokio::spawn(async move {
        // The body is an `async move` block made once per attempt: what it uses from around
        // it is cloned per attempt.
        larder::transaction!(s, clone(text, a), |uow| {
            // The first attempt fails as retryable: the body runs again.
            if a.fetch_add(1, Ordering::SeqCst) == 0 {
                return Err(Error::Transient {
                    kind: TransientKind::Serialization,
                });
            }
            uow.repo::<Note>()
                .insert(&Note {
                    id: "n1".into(),
                    text: text.clone(),
                })
                .await?;
            Ok::<_, Error>(7)
        })
        .await
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(n, 7);
    assert_eq!(attempts.load(Ordering::SeqCst), 2, "retried once");

    // `Err` rolls back.
    let r: Result<(), Error> = larder::transaction!(store, |uow| {
        uow.repo::<Note>()
            .insert(&Note {
                id: "n2".into(),
                text: "rolled back".into(),
            })
            .await?;
        Err(Error::InvalidEvent("no".into()))
    })
    .await;
    assert!(r.is_err());
    let mut uow = store.read().await.unwrap();
    assert!(
        uow.repo::<Note>()
            .get(&"n1".to_string())
            .await
            .unwrap()
            .is_some()
    );
    assert!(
        uow.repo::<Note>()
            .get(&"n2".to_string())
            .await
            .unwrap()
            .is_none()
    );
}
