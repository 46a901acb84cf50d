//! A small order-management service on larder, running on embedded SQLite (no server).
//!
//! ```text
//! cargo run -p examples --example order_service
//! LARDER_DATABASE_URL=postgres://postgres@127.0.0.1/test cargo run -p examples --example order_service
//! RUST_LOG=larder=info cargo run -p examples --example order_service   # see the spans
//! ```
//!
//! The data is durable: every run adds a new customer, orders and cart (fresh UUID v7 ids)
//! to the same database and ends by printing how much it now holds, so running it again
//! just works. Without `LARDER_DATABASE_URL` the database is `larder-order-service.db` in
//! the system's temporary directory; delete it to start over.
//!
//! It shows: entities stored as a document and as mapped columns, a unit of work spanning
//! two repositories, specification queries with ordering and keyset pagination, streaming,
//! an optimistic-concurrency conflict resolved by retrying, and an event-sourced cart whose
//! projection keeps an SQL read model (read-your-writes with `wait_for`), and an invoice
//! attached to each order: the file is staged in the order's unit of work, so a committed
//! order always has its invoice and a rejected one leaves no file behind.

use std::sync::Arc;

use anyhow::{Context, Result, ensure};
use std::time::Duration;

use larder::blob::{Attachments, BlobKey, Blobs, PutOptions};
use larder::events::{Aggregate, EventFilter, RecordedEvent};
use larder::outbox::{Message, Outbox, Relay, StdoutSink};
use larder::{
    Deadline, DomainEvent, Entity, Error, EventSourced, EventStore, Order as Sort, Projection,
    ProjectionRunner, Query, Settings, Spec, TransactionOptions, Uow, UowOptions, field,
};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

// # Step 1: the domain
//
// A customer is stored as mapped columns (one column per field); an order is a document
// (the whole struct as JSON) whose `customer_id`, `status` and `total_cents` are real,
// indexed columns that specifications can query.

/// A customer with a credit limit.
#[derive(Debug, Clone, PartialEq, Entity)]
#[larder(table = "customers")]
struct Customer {
    id: Uuid,
    #[larder(indexed)]
    email: String,
    name: String,
    #[larder(column = "credit_limit")]
    credit_limit_cents: i64,
}

/// One line of an order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Line {
    sku: String,
    qty: i64,
    price_cents: i64,
}

/// An order, with its lines in the document body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Entity)]
#[larder(table = "orders", document)]
struct Order {
    id: Uuid,
    #[larder(indexed)]
    customer_id: Uuid,
    #[larder(indexed)]
    status: String,
    #[larder(indexed)]
    total_cents: i64,
    lines: Vec<Line>,
}

impl Order {
    fn new(customer_id: Uuid, lines: Vec<Line>) -> Order {
        let mut o = Order {
            id: Uuid::now_v7(),
            customer_id,
            status: "open".into(),
            total_cents: 0,
            lines,
        };
        o.recompute();
        o
    }

    fn recompute(&mut self) {
        self.total_cents = self.lines.iter().map(|l| l.qty * l.price_cents).sum();
    }
}

fn line(sku: &str, qty: i64, price_cents: i64) -> Line {
    Line {
        sku: sku.into(),
        qty,
        price_cents,
    }
}

// # Step 2: a use case = one unit of work across two repositories
//
// Placing an order reads the customer, sums their open orders, checks the credit limit and
// inserts the order: all in one transaction. Any error rolls everything back.

async fn place_order(
    uow: &mut Uow,
    outbox: &Outbox,
    attachments: &Attachments,
    customer_id: Uuid,
    lines: Vec<Line>,
) -> Result<Order> {
    let customer = uow.repo::<Customer>().require(&customer_id).await?;
    let open = Query::new(
        field("customer_id")
            .eq(customer_id)
            .and(field("status").eq("open")),
    );
    let mut exposure = 0;
    let mut page = uow
        .repo::<Order>()
        .find(&open.clone().with_limit(100))
        .await?;
    loop {
        exposure += page.items.iter().map(|o| o.total_cents).sum::<i64>();
        match page.next {
            Some(cursor) => {
                page = uow
                    .repo::<Order>()
                    .find(&open.clone().with_limit(100).with_after(cursor))
                    .await?
            }
            None => break,
        }
    }
    let order = Order::new(customer_id, lines);
    ensure!(
        exposure + order.total_cents <= customer.credit_limit_cents,
        "credit limit of {} exceeded: {} open + {} new > {}",
        customer.name,
        exposure,
        order.total_cents,
        customer.credit_limit_cents
    );
    uow.repo::<Order>().insert(&order).await?;
    // The invoice, a file beside the row: uploaded now, recorded in this transaction, so
    // it is live exactly when the order is (a rollback deletes the upload).
    let invoice = order
        .lines
        .iter()
        .map(|l| format!("{} x {} at {} cents\n", l.qty, l.sku, l.price_cents))
        .collect::<String>()
        + &format!("total {} cents\n", order.total_cents);
    attachments
        .stage(
            uow,
            &BlobKey::new(format!("invoices/{}.txt", order.id))?,
            invoice.into_bytes(),
            PutOptions::new().content_type("text/plain"),
        )
        .await?;
    // The transactional outbox: the message commits with the order (never published for
    // a rejected order, never lost for a placed one); a relay publishes it after commit.
    let placed = serde_json::json!({ "order_id": order.id, "total_cents": order.total_cents });
    outbox
        .enqueue(
            uow,
            Message::json("orders.placed", &placed)?.with_key(order.id.to_string()),
        )
        .await?;
    Ok(order)
}

// `pub(crate)`: `examples/tests/order_service.rs` runs this very program twice against
// one database.
#[tokio::main]
pub(crate) async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();

    // # Step 3: open the store
    //
    // Settings come from the environment (`LARDER_DATABASE_URL`, …); without any, this
    // example uses a SQLite file in the temporary directory, kept from run to run.
    let mut settings = Settings::from_env()?;
    if std::env::var_os("LARDER_DATABASE_URL").is_none() {
        let path = std::env::temp_dir().join("larder-order-service.db");
        settings.database_url = larder::DatabaseUrl::new(format!("sqlite://{}", path.display()));
    }
    println!("store: {}", settings.database_url); // Display redacts passwords
    let store = larder::connect(&settings).await?;
    store.register::<Customer>().await?;
    store.register::<Order>().await?;

    // # Step 4: create a customer and place orders
    let ada = Customer {
        id: Uuid::now_v7(),
        email: format!("ada+{}@example.com", Uuid::now_v7().simple()),
        name: "Ada".into(),
        credit_limit_cents: 50_000,
    };
    let ada_id = ada.id;
    let mut uow = store
        .begin_with(
            UowOptions::default()
                .with_actor("example")
                .with_correlation_id("setup"),
        )
        .await?;
    uow.repo::<Customer>().insert(&ada).await?;
    uow.commit().await?;

    let baskets = [
        vec![line("tea", 2, 450), line("cup", 1, 1_200)],
        vec![line("kettle", 1, 3_900)],
        vec![line("tea", 10, 450)],
        vec![line("pot", 1, 2_500), line("tea", 4, 450)],
        vec![line("mug", 6, 800)],
        vec![line("espresso machine", 1, 39_000)], // over the limit: rolled back
    ];
    let outbox = Outbox::open(&store).await?;
    // Invoices go to a folder of this database's own (`LARDER_BLOB_URL` may name another).
    let blob_dir = match &settings.blob_url {
        Some(u) => std::path::PathBuf::from(u.expose().trim_start_matches("file://")),
        None => std::env::temp_dir().join(format!(
            "larder-order-service-blobs-{}",
            settings
                .database_url
                .expose()
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                .collect::<String>()
        )),
    };
    let attachments = Attachments::open(&store, Blobs::filesystem(&blob_dir).await?).await?;
    let mut placed = Vec::new();
    for basket in baskets {
        let mut uow = store.begin().await?;
        match place_order(&mut uow, &outbox, &attachments, ada_id, basket).await {
            Ok(order) => {
                uow.commit().await?;
                println!("placed order {} for {} cents", order.id, order.total_cents);
                placed.push(order.id);
            }
            Err(e) => {
                uow.rollback().await?;
                println!("rejected: {e}");
            }
        }
    }

    // Every committed order has its invoice.
    let mut uow = store.read().await?;
    for id in &placed {
        let key = BlobKey::new(format!("invoices/{id}.txt"))?;
        let invoice = uow.blobs()?.get(&key).await?;
        ensure!(invoice.content.ends_with(b" cents\n"), "invoice of {id}");
    }
    drop(uow);
    println!(
        "{} invoice(s) attached in the orders' units of work",
        placed.len()
    );

    // # Step 4b: relay the outbox
    //
    // A relay publishes committed messages at least once, in per-key order, here to
    // stdout as JSON lines (`larder-relay` has Redis Streams, NATS JetStream, RabbitMQ,
    // MQTT and HTTP sinks; `larder outbox relay --sink …` runs one as a process).
    let relay = Relay::builder(&store)
        .name("order-service")
        .sink(StdoutSink)
        .build()
        .await?;
    let mut published = 0;
    loop {
        let batch = relay.run_once().await?;
        published += batch.delivered;
        if batch.fetched == 0 {
            break;
        }
    }
    relay.release().await?;
    println!("relay published {published} message(s)");

    // # Step 5: specification queries, ordering and keyset pages
    let mut uow = store.read().await?;
    let big_tea_orders = Query::new(
        field("customer_id")
            .eq(ada_id)
            .and(field("total_cents").ge(2_000))
            .and(field("status").is_in(["open", "paid"])),
    )
    .order_by(Sort::desc("total_cents"))
    .with_limit(2);
    let mut page = uow.repo::<Order>().find(&big_tea_orders).await?;
    let mut n = 1;
    loop {
        let totals: Vec<i64> = page.items.iter().map(|o| o.total_cents).collect();
        println!("page {n}: totals {totals:?}");
        let Some(cursor) = page.next else { break };
        page = uow
            .repo::<Order>()
            .find(&big_tea_orders.clone().with_after(cursor))
            .await?;
        n += 1;
    }
    // The same filter as an HTTP API would receive it.
    let json = r#"{"op":"and","of":[{"op":"eq","field":"status","value":"open"},{"op":"lt","field":"total_cents","value":3000}]}"#;
    let small = uow.repo::<Order>().count(&Spec::from_json(json)?).await?;
    println!("small open orders (every customer, every run): {small}");
    uow.commit().await?;

    // # Step 6: a conflict, and the retry that resolves it
    //
    // Two clerks load the same order and both add a line. The second save is stale: larder
    // refuses it with `Error::Conflict` instead of silently losing the first clerk's line.
    let order_id = {
        let mut uow = store.read().await?;
        let first = uow
            .repo::<Order>()
            .find(&Query::new(field("customer_id").eq(ada_id)).with_limit(1))
            .await?;
        first.items.first().context("no order")?.id
    };
    let mut clerk_a = store.begin().await?;
    let mut a = clerk_a.repo::<Order>().require(&order_id).await?;
    a.lines.push(line("biscuits", 1, 300));
    a.recompute();
    clerk_a.repo::<Order>().save(&mut a).await?;
    clerk_a.commit().await?;

    let stale_version = a.version - 1;
    let mut clerk_b = store.begin().await?;
    let mut b = clerk_b.repo::<Order>().require(&order_id).await?;
    b.version = stale_version; // as if B had loaded it before A saved
    b.lines.push(line("honey", 1, 700));
    b.recompute();
    match clerk_b.repo::<Order>().save(&mut b).await {
        Err(e @ Error::Conflict { .. }) => println!("clerk B: {e}"),
        other => anyhow::bail!("expected a conflict, got {other:?}"),
    }
    clerk_b.rollback().await?;

    // The fix: run the use case in `transaction` with retry on conflict; each attempt
    // reloads the order, so the retry applies B's change on top of A's.
    let retries = TransactionOptions::default().with_retry_on_conflict(true);
    let attempts = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let counter = attempts.clone();
    let honey_total = store
        .transaction_with(
            UowOptions::default().with_actor("clerk-b"),
            &retries,
            |uow| {
                let counter = counter.clone();
                Box::pin(async move {
                    let n = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let mut o = uow.repo::<Order>().require(&order_id).await?;
                    if n == 0 {
                        o.version = stale_version; // the first attempt is still stale
                    }
                    o.lines.push(line("honey", 1, 700));
                    o.recompute();
                    uow.repo::<Order>().save(&mut o).await?;
                    Ok::<_, Error>(o.total_cents)
                })
            },
        )
        .await?;
    println!(
        "clerk B succeeded after {} attempts; order total is now {honey_total} cents",
        attempts.load(std::sync::atomic::Ordering::SeqCst)
    );

    // # Step 7: stream everything (constant memory) to compute revenue
    use futures_util::StreamExt;
    let mut uow = store.read().await?;
    let mut revenue = 0;
    let mut orders = uow
        .repo::<Order>()
        .stream(&Query::new(field("customer_id").eq(ada_id)));
    while let Some(order) = orders.next().await {
        revenue += order?.total_cents;
    }
    drop(orders);
    uow.commit().await?;
    println!("revenue from Ada: {revenue} cents");

    // # Step 8: an event-sourced cart and a projection that keeps an SQL read model
    //
    // The cart's state is its events. `load` replays them (from a snapshot every 10
    // events), `save` appends the new ones with the loaded version as the expected
    // version, in the unit of work. The projection runner feeds every event to
    // `CartTotals` and commits its checkpoint with the read-model write, so a crash never
    // skips or double-counts an event; `wait_for` gives read-your-writes.
    store.register::<CartTotal>().await?;
    let events = EventStore::open(&store).await?;
    let runner = ProjectionRunner::new(&events).with(CartTotals);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let projections = tokio::spawn(async move {
        runner
            .run(async {
                let _ = stopped.await;
            })
            .await
    });

    let mut uow = store
        .begin_with(UowOptions::default().with_actor("ada"))
        .await?;
    // A new cart on every run: a cart that is checked out takes no more items.
    let cart_id = Uuid::now_v7().simple().to_string();
    let mut cart = events.load::<Cart>(&mut uow, &cart_id).await?;
    cart.handle(CartCommand::Add(line("tea", 2, 450)))
        .map_err(anyhow::Error::msg)?;
    cart.handle(CartCommand::Add(line("scones", 6, 120)))
        .map_err(anyhow::Error::msg)?;
    events.save(&mut uow, &mut cart).await?;
    let committed = uow.commit().await?;
    let position = committed.position.context("the cart appended events")?;

    // A second writer with a stale copy of the cart is refused (optimistic concurrency).
    let mut uow = store.begin().await?;
    let mut stale = Aggregate::<Cart>::new(&cart_id);
    stale
        .handle(CartCommand::Add(line("jam", 1, 350)))
        .map_err(anyhow::Error::msg)?;
    match events.save(&mut uow, &mut stale).await {
        Err(e @ Error::Conflict { .. }) => println!("stale cart: {e}"),
        other => anyhow::bail!("expected a conflict, got {other:?}"),
    }
    drop(uow);

    events
        .wait_for(
            "cart_totals",
            position,
            Deadline::after(Duration::from_secs(5)),
        )
        .await?;
    let mut uow = store.read().await?;
    let total = uow
        .repo::<CartTotal>()
        .require(&format!("cart-{cart_id}"))
        .await?;
    uow.commit().await?;
    ensure!(total.total_cents == 2 * 450 + 6 * 120, "projection total");
    println!(
        "cart {cart_id}: version {}, {} items; read model total {} cents",
        cart.version(),
        cart.state().lines.len(),
        total.total_cents
    );
    // Check out: load (replay), decide, save.
    let mut uow = store.begin().await?;
    let mut cart = events.load::<Cart>(&mut uow, &cart_id).await?;
    cart.handle(CartCommand::CheckOut)
        .map_err(anyhow::Error::msg)?;
    events.save(&mut uow, &mut cart).await?;
    uow.commit().await?;
    ensure!(
        cart.state().checked_out && cart.version() == 3,
        "checked out"
    );
    println!("cart {cart_id} checked out at version {}", cart.version());

    let _ = stop.send(());
    projections.await??;

    // # Step 9: the data stays
    //
    // Everything above was committed: this run's rows join those of earlier runs.
    let mut uow = store.read().await?;
    let customers = uow.repo::<Customer>().count(&Spec::all()).await?;
    let orders = uow.repo::<Order>().count(&Spec::all()).await?;
    let carts = uow.repo::<CartTotal>().count(&Spec::all()).await?;
    let log = events.stats(&mut uow).await?;
    let invoices = attachments.usage(&mut uow, "invoices/").await?;
    uow.commit().await?;
    // Uploads no committed row references (a crash between upload and commit) go after
    // an hour's grace; `larder blobs sweep` does the same from the command line.
    let swept = attachments.sweep(Default::default()).await?;
    println!(
        "{} invoice(s), {} bytes, in {}; the sweep removed {} orphan(s)",
        invoices.blobs,
        invoices.bytes,
        blob_dir.display(),
        swept.swept
    );
    println!(
        "the database now holds {orders} order(s), {customers} customer(s), {carts} cart(s) \
         and {} event(s)",
        log.events
    );

    store.close().await;
    Ok(())
}

// # The event-sourced side: a cart, its events and a projection

/// What happens to a cart.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type")]
enum CartEvent {
    ItemAdded { line: Line },
    CheckedOut,
}

impl DomainEvent for CartEvent {
    const TYPES: &'static [&'static str] = &["ItemAdded", "CheckedOut"];
    fn event_type(&self) -> &'static str {
        match self {
            CartEvent::ItemAdded { .. } => "ItemAdded",
            CartEvent::CheckedOut => "CheckedOut",
        }
    }
}

enum CartCommand {
    Add(Line),
    CheckOut,
}

/// The cart's state, rebuilt from its events.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Cart {
    lines: Vec<Line>,
    checked_out: bool,
}

impl EventSourced for Cart {
    type Event = CartEvent;
    type Command = CartCommand;
    type Error = &'static str;
    const CATEGORY: &'static str = "cart";
    const SNAPSHOT_EVERY: Option<u64> = Some(10);

    fn apply(&mut self, e: &CartEvent) {
        match e {
            CartEvent::ItemAdded { line } => self.lines.push(line.clone()),
            CartEvent::CheckedOut => self.checked_out = true,
        }
    }

    fn decide(&self, c: CartCommand) -> std::result::Result<Vec<CartEvent>, &'static str> {
        if self.checked_out {
            return Err("the cart is checked out");
        }
        Ok(match c {
            CartCommand::Add(line) if line.qty > 0 => vec![CartEvent::ItemAdded { line }],
            CartCommand::Add(_) => return Err("quantity must be positive"),
            CartCommand::CheckOut if self.lines.is_empty() => return Err("the cart is empty"),
            CartCommand::CheckOut => vec![CartEvent::CheckedOut],
        })
    }
}

/// The read model: one row per cart with its running total.
#[derive(Debug, Clone, Serialize, Deserialize, Entity)]
#[larder(table = "cart_totals", document)]
struct CartTotal {
    id: String,
    #[larder(indexed)]
    total_cents: i64,
}

/// Keeps `cart_totals` from the log, in the same transaction as its checkpoint.
struct CartTotals;

impl Projection for CartTotals {
    fn name(&self) -> &str {
        "cart_totals"
    }

    fn filter(&self) -> EventFilter {
        EventFilter::category("cart")
    }

    async fn handle(&self, uow: &mut Uow, event: &RecordedEvent) -> larder::Result<()> {
        let CartEvent::ItemAdded { line } = event.decode::<CartEvent>()? else {
            return Ok(());
        };
        let id = event.stream_id.clone();
        let mut repo = uow.repo::<CartTotal>();
        match repo.get(&id).await? {
            Some(mut t) => {
                t.total_cents += line.qty * line.price_cents;
                repo.save(&mut t).await?;
            }
            None => {
                let total_cents = line.qty * line.price_cents;
                repo.insert(&CartTotal { id, total_cents }).await?;
            }
        }
        Ok(())
    }
}
