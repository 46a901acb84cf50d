//! Multi-column indexes (`#[larder(index(country, score))]`, issue 10 item 6): created by
//! `register` on SQLite and PostgreSQL, checked on existing tables, and used by the query
//! planner for a W7-like query (equality on the first column, order by the second).

use larder::postgres::PgUowExt;
use larder::sqlite::SqliteUowExt;
use larder::{Entity, Error, Order, Query, field};
use larder_testkit::backends::{self, TestDb};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Entity)]
#[larder(table = "ranked", index = "country, score", index = "score, id")]
struct Ranked {
    id: i64,
    country: String,
    score: f64,
    note: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Entity)]
#[larder(table = "ranked_docs", document, index(country, score))]
struct RankedDoc {
    id: i64,
    #[larder(indexed)]
    country: String,
    #[larder(indexed)]
    score: f64,
    note: String,
}

async fn fill(db: &TestDb) {
    db.store.register::<Ranked>().await.unwrap();
    db.store.register::<RankedDoc>().await.unwrap();
    let mut uow = db.store.begin().await.unwrap();
    for (n, country) in ["se", "no", "dk", "fi"]
        .iter()
        .cycle()
        .take(200)
        .enumerate()
    {
        let i = i64::try_from(n).unwrap();
        let country = (*country).to_string();
        let score = f64::from(u32::try_from(i * 37 % 101).unwrap());
        uow.repo::<Ranked>()
            .insert(&Ranked {
                id: i,
                country: country.clone(),
                score,
                note: format!("n{i}"),
            })
            .await
            .unwrap();
        uow.repo::<RankedDoc>()
            .insert(&RankedDoc {
                id: i,
                country,
                score,
                note: format!("n{i}"),
            })
            .await
            .unwrap();
    }
    uow.commit().await.unwrap();
}

/// The W7-shaped query: one country, best scores first.
fn best_in(country: &str) -> Query {
    Query::new(field("country").eq(country))
        .order_by(Order::desc("score"))
        .with_limit(10)
}

async fn check_results(db: &TestDb) {
    let mut uow = db.store.read().await.unwrap();
    let page = uow.repo::<Ranked>().find(&best_in("se")).await.unwrap();
    let scores: Vec<f64> = page.items.iter().map(|v| v.value.score).collect();
    let mut sorted = scores.clone();
    sorted.sort_by(|a, b| b.total_cmp(a));
    assert_eq!(scores, sorted);
    assert_eq!(scores.len(), 10);
    let docs = uow.repo::<RankedDoc>().find(&best_in("se")).await.unwrap();
    let doc_scores: Vec<f64> = docs.items.iter().map(|v| v.value.score).collect();
    assert_eq!(doc_scores, scores, "documents and columns agree");
    uow.commit().await.unwrap();
}

#[tokio::test]
async fn sqlite_creates_the_index_and_the_planner_uses_it() {
    let db = backends::sqlite("composite_index::sqlite").await.unwrap();
    fill(&db).await;
    check_results(&db).await;
    let mut uow = db.store.begin().await.unwrap();
    let conn = uow.sqlite().unwrap();
    let cols: Vec<String> =
        sqlx::query_scalar("SELECT name FROM pragma_index_info('ranked_country_score_idx')")
            .fetch_all(&mut *conn)
            .await
            .unwrap();
    assert_eq!(cols, ["country", "score"]);
    let cols: Vec<String> =
        sqlx::query_scalar("SELECT name FROM pragma_index_info('ranked_score_id_idx')")
            .fetch_all(&mut *conn)
            .await
            .unwrap();
    assert_eq!(cols, ["score", "id"]);
    let plan: Vec<String> = sqlx::query_scalar(
        "SELECT detail FROM (EXPLAIN QUERY PLAN SELECT id FROM ranked WHERE country = 'se' \
         ORDER BY score DESC LIMIT 10)",
    )
    .fetch_all(&mut *conn)
    .await
    .unwrap_or_default();
    // `EXPLAIN QUERY PLAN` cannot be a subquery on every SQLite: ask directly then.
    let plan = if plan.is_empty() {
        sqlx::query("EXPLAIN QUERY PLAN SELECT id FROM ranked WHERE country = 'se' ORDER BY score DESC LIMIT 10")
            .fetch_all(&mut *conn)
            .await
            .unwrap()
            .iter()
            .map(|r| sqlx::Row::get::<String, _>(r, 3))
            .collect()
    } else {
        plan
    };
    let plan = plan.join(" | ");
    assert!(
        plan.contains("ranked_country_score_idx") && !plan.contains("TEMP B-TREE"),
        "served in index order: {plan}"
    );
    uow.rollback().await.unwrap();
    db.finish().await;
}

#[tokio::test]
async fn postgres_creates_the_index() {
    let Some(db) = backends::postgres("composite_index::pg").await else {
        return;
    };
    fill(&db).await;
    check_results(&db).await;
    let mut uow = db.store.begin().await.unwrap();
    let def: String = sqlx::query_scalar(
        "SELECT indexdef FROM pg_indexes WHERE schemaname = current_schema() \
         AND indexname = 'ranked_country_score_idx'",
    )
    .fetch_one(uow.postgres().unwrap())
    .await
    .unwrap();
    assert!(def.contains("(country, score)"), "{def}");
    uow.rollback().await.unwrap();
    db.finish().await;
}

#[tokio::test]
async fn a_missing_composite_index_is_a_schema_mismatch() {
    let db = backends::sqlite("composite_index::drift").await.unwrap();
    db.store.register::<Ranked>().await.unwrap();
    let mut uow = db.store.begin().await.unwrap();
    sqlx::query("DROP INDEX ranked_country_score_idx")
        .execute(uow.sqlite().unwrap())
        .await
        .unwrap();
    uow.commit().await.unwrap();
    let e = db.store.register::<Ranked>().await.unwrap_err();
    assert!(
        matches!(&e, Error::SchemaMismatch { differences, .. }
            if differences.contains("index `ranked_country_score_idx` on `country`, `score` is missing")),
        "{e}"
    );
    db.finish().await;
}

#[test]
fn bad_composite_indexes_are_refused_by_validate() {
    let mut def = Ranked::def().clone();
    def.indexes = vec![larder::IndexDef::new(&["country", "nope"])];
    let e = def.validate().unwrap_err().to_string();
    assert!(e.contains("`nope`, which is not a registered field"), "{e}");
    def.indexes = vec![larder::IndexDef::new(&["country"])];
    let e = def.validate().unwrap_err().to_string();
    assert!(e.contains("needs 2 to 8 fields"), "{e}");
    def.indexes = vec![larder::IndexDef::new(&["country", "country"])];
    let e = def.validate().unwrap_err().to_string();
    assert!(e.contains("twice"), "{e}");
    // In a document entity a field without a column cannot be indexed.
    let mut doc = RankedDoc::def().clone();
    doc.indexes = vec![larder::IndexDef::new(&["country", "note"])];
    let e = doc.validate().unwrap_err().to_string();
    assert!(e.contains("mark it #[larder(indexed)]"), "{e}");
}
