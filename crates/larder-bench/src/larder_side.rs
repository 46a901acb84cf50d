//! The larder side: the same operations through units of work and repositories, written
//! the way an application would write them.

use anyhow::Result;
use futures_util::StreamExt;
use larder::{Order, Query, Store, Versioned, field};
use uuid::Uuid;

use crate::data::Customer;

/// W5 insert: `begin`, `insert`, `commit`.
pub(crate) async fn insert(store: &Store, c: &Customer) -> Result<()> {
    let mut uow = store.begin().await?;
    uow.repo::<Customer>().insert(c).await?;
    uow.commit().await?;
    Ok(())
}

/// W5 get: a read-only unit of work per get.
pub(crate) async fn get(store: &Store, id: Uuid) -> Result<Versioned<Customer>> {
    let mut uow = store.read().await?;
    let v = uow.repo::<Customer>().require(&id).await?;
    uow.commit().await?;
    Ok(v)
}

/// W5 update: load, change `balance_cents`, save with the optimistic version check.
pub(crate) async fn update_balance(store: &Store, id: Uuid, delta: i64) -> Result<u64> {
    let mut uow = store.begin().await?;
    let mut repo = uow.repo::<Customer>();
    let mut c = repo.require(&id).await?;
    c.value.balance_cents += delta;
    let version = repo.save(&mut c).await?;
    uow.commit().await?;
    Ok(version)
}

/// The W7 query: `country = c AND age >= a`, by score descending, one page.
pub(crate) fn find_query(country: &str, min_age: i64, page: u32) -> Query {
    Query::new(field("country").eq(country).and(field("age").ge(min_age)))
        .order_by(Order::desc("score"))
        .with_limit(page)
}

/// W7 find: one page in a read-only unit of work; returns the page size and whether
/// another page follows.
pub(crate) async fn find(store: &Store, query: &Query) -> Result<(Vec<Versioned<Customer>>, bool)> {
    let mut uow = store.read().await?;
    let page = uow.repo::<Customer>().find(query).await?;
    uow.commit().await?;
    let more = page.next.is_some();
    Ok((page.items, more))
}

/// W8 stream: every entity, decoded, in a read-only unit of work. Returns (rows, sum of
/// balances).
pub(crate) async fn stream_all(store: &Store) -> Result<(u64, i64)> {
    let mut uow = store.read().await?;
    let mut n = 0_u64;
    let mut sum = 0_i64;
    {
        let mut s = uow.repo::<Customer>().stream(&Query::all());
        while let Some(v) = s.next().await {
            let v = v?;
            n += 1;
            sum = sum.wrapping_add(v.value.balance_cents);
        }
    }
    uow.commit().await?;
    Ok((n, sum))
}

/// Loads entities through larder, `per_uow` inserts per unit of work (not measured).
pub(crate) async fn load(
    store: &Store,
    rows: impl Iterator<Item = Customer>,
    per_uow: usize,
) -> Result<u64> {
    let mut n = 0_u64;
    let mut uow = store.begin().await?;
    let mut in_uow = 0;
    for c in rows {
        uow.repo::<Customer>().insert(&c).await?;
        n += 1;
        in_uow += 1;
        if in_uow == per_uow {
            uow.commit().await?;
            uow = store.begin().await?;
            in_uow = 0;
        }
    }
    uow.commit().await?;
    Ok(n)
}
