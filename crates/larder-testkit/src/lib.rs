//! larder-testkit: the conformance suite every larder backend must pass, and per-test
//! database helpers.
//!
//! **Not semver-stable.** The rules live in [`suite`], one `pub async fn` per rule; the
//! [`conformance!`] macro stamps one named `#[tokio::test]` per rule for a backend
//! factory from [`backends`], so a failure reads `postgres::update_with_stale_version_conflicts`.
//! Backend differences are declared [`larder::Capabilities`] that rules consult; nothing is
//! skipped silently.
//!
//! Each test gets its own database (a temporary SQLite file, a fresh PostgreSQL schema
//! named after the test), so tests run in parallel.
//!
//! PostgreSQL tests read `LARDER_TEST_POSTGRES_URL` and skip with a printed reason when it
//! is not set, unless `LARDER_REQUIRE_BACKENDS=1`, which turns the skip into a failure (CI).
//!
//! The TLS tests (`tests/tls.rs`) configure that server for TLS themselves, with a test CA
//! they make: see [`tls`] for what this changes on the server (idempotent, harmless to
//! other clients) and how to undo it.
#![deny(rustdoc::broken_intra_doc_links)]

pub mod attachments;
pub mod backends;
pub mod blob;
pub mod entities;
pub mod events;
pub mod outbox;
pub mod rng;
pub mod suite;
pub mod tls;

pub use backends::TestDb;

/// Stamps the whole conformance suite for a backend factory in [`backends`]
/// (`memory`, `sqlite`, `postgres`): `larder_testkit::conformance!(sqlite);`
#[macro_export]
macro_rules! conformance {
    ($backend:ident) => {
        mod $backend {
            $crate::__stamp!($backend;
                // unit of work
                commit_makes_writes_visible,
                rollback_discards_writes,
                drop_without_commit_rolls_back,
                panic_inside_a_unit_of_work_rolls_back,
                read_only_unit_of_work_rejects_writes,
                hooks_run_around_commit_in_order,
                failing_pre_commit_hook_rolls_back,
                rollback_hooks_run_on_drop,
                pre_commit_hook_can_write_in_the_transaction,
                savepoint_error_undoes_only_the_inner_scope,
                savepoint_success_keeps_inner_work,
                transaction_helper_commits_on_ok_and_rolls_back_on_err,
                transaction_helper_retries_conflicts_only_when_opted_in,
                finished_unit_of_work_is_closed,
                commit_ok_means_the_writes_are_visible,
                per_call_deadline_does_not_leak_into_commit,
                // repository
                insert_and_get_round_trip_documents,
                insert_and_get_round_trip_mapped_columns,
                duplicate_insert_is_already_exists_and_uow_stays_usable,
                update_with_stale_version_conflicts,
                update_of_missing_entity_is_not_found,
                delete_checks_the_version,
                get_many_keeps_input_order_and_skips_missing,
                exists_and_count,
                save_bumps_the_version,
                // specifications
                specification_operators_select_the_expected_rows,
                unknown_fields_and_bad_values_are_typed_errors,
                unsupported_operators_are_declared_and_typed,
                regex_dialect_selects_the_same_rows_everywhere,
                non_portable_regex_is_invalid_query_everywhere,
                nul_in_text_is_a_typed_error_everywhere,
                like_operators_compare_noncharacters_exactly,
                // ordering and pagination
                find_orders_by_several_keys_with_id_tie_break,
                keyset_pagination_visits_every_row_once,
                offset_pagination_matches_keyset_pages,
                page_size_over_the_cap_is_rejected,
                foreign_cursor_is_rejected,
                stream_yields_every_match_in_order,
                stream_honours_limit_and_cursor,
                // deadlines and observability
                expired_deadline_fails_before_any_io,
                uow_deadline_bounds_later_calls_and_store_stays_healthy,
                audit_sink_receives_one_record_per_operation,
                wrappers_forward_through_arc_dyn_backend,
                // values at their limits
                non_finite_floats_are_rejected_on_write,
                extreme_finite_floats_read_back_exactly,
                negative_zero_is_stored_as_positive_zero,
                keyset_pagination_over_float_keys_terminates,
                long_ids_and_indexed_text_are_limit_exceeded,
                get_many_with_duplicate_ids_returns_each_entity_once,
                json_null_in_a_nullable_json_field_is_sql_null,
                // schema drift and registration
                register_detects_schema_drift,
                using_an_unregistered_entity_is_a_typed_error,
            );
        }
    };
}

/// Stamps the event-store conformance rules ([`events`]) for a backend factory:
/// `larder_testkit::events_conformance!(sqlite);`
#[macro_export]
macro_rules! events_conformance {
    ($backend:ident) => {
        mod $backend {
            $crate::__stamp_events!($backend;
                append_and_read_stream_round_trip,
                expected_versions_are_enforced,
                reappending_the_same_event_ids_is_already_appended,
                appends_share_the_unit_of_work_with_repositories,
                read_all_pages_through_the_log_in_order,
                read_all_filters_by_category_and_type,
                read_stream_directions_and_stream_info,
                bad_event_input_is_typed,
                aggregates_load_snapshot_plus_tail_and_save_with_expected_version,
                upcasters_apply_on_every_read_path,
                projections_commit_checkpoints_with_their_writes,
                wait_for_gives_read_your_writes,
                subscriptions_catch_up_then_follow_live,
                committed_position_forgets_appends_rolled_back_by_a_savepoint,
                projections_retry_transient_failures_while_others_keep_up,
                a_failing_projection_stops_alone_with_the_failing_event_in_its_status,
                concurrent_runners_with_read_ahead_apply_every_event_once,
                adaptive_batches_shrink_after_a_failure_and_apply_every_event_once,
                projections_take_borrowed_pages,
            );
        }
    };
}

/// Stamps the outbox conformance rules for a backend:
/// `larder_testkit::outbox_conformance!(sqlite);`
#[macro_export]
macro_rules! outbox_conformance {
    ($backend:ident) => {
        mod $backend {
            $crate::__stamp_rules!($backend, outbox;
                enqueued_messages_commit_and_roll_back_with_the_unit_of_work,
                relay_delivers_every_message_once_in_key_order,
                failing_messages_dead_letter_and_park_their_key,
                an_unavailable_broker_dead_letters_nothing,
                poison_is_dead_lettered_at_once,
                inbox_applies_a_message_once,
                bad_outbox_input_is_typed,
                relays_split_partitions_and_take_over_a_silent_ones,
                relay_run_wakes_on_commit_and_shuts_down_gracefully,
                relay_run_pipelines_a_backlog_once_in_key_order,
                a_relay_keeping_nothing_deletes_what_it_delivered,
                purge_removes_old_done_messages_in_bounded_batches,
                appended_events_are_enqueued_by_route,
            );
        }
    };
}

/// Stamps the attachment rules (blobs in the unit of work) for a backend:
/// `larder_testkit::attachments_conformance!(sqlite);`
#[macro_export]
macro_rules! attachments_conformance {
    ($backend:ident) => {
        mod $backend {
            $crate::__stamp_rules!($backend, attachments;
                staged_blobs_commit_and_roll_back_with_the_unit_of_work,
                delete_and_overwrite_take_effect_after_commit,
                sweep_removes_only_unreferenced_objects,
                a_swept_upload_is_never_recorded,
                content_addressed_mode_stores_identical_content_once,
                bad_attachment_input_is_typed,
            );
        }
    };
}

/// Stamps the blob conformance rules for one blob backend of [`blob`]:
/// `larder_testkit::blob_conformance!(memory);`, `blob_conformance!(filesystem);`.
#[macro_export]
macro_rules! blob_conformance {
    ($backend:ident) => {
        mod $backend {
            $crate::__stamp_blob_rules!($backend;
                put_get_head_round_trip,
                overwrite_replaces_and_if_absent_refuses,
                ranges_read_exactly_their_bytes,
                list_by_prefix_in_pages,
                delete_is_idempotent,
                copy_duplicates_a_blob,
                bad_metadata_is_refused_before_storing,
                concurrent_overwrites_are_atomic,
                hostile_keys_never_reach_the_store,
                streamed_put_and_get_round_trip,
                a_large_stream_goes_up_in_parts,
                attachments_over_the_store_keep_their_rules,
            );
        }
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __stamp_blob_rules {
    ($backend:ident; $($rule:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $rule() {
            let target = $crate::blob::$backend().await;
            $crate::blob::$rule(&target).await;
        }
    )*};
}

#[doc(hidden)]
#[macro_export]
macro_rules! __stamp_rules {
    ($backend:ident, $module:ident; $($rule:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $rule() {
            let name = concat!(stringify!($module), "_", stringify!($backend), "::", stringify!($rule));
            let Some(db) = $crate::backends::$backend(name).await else {
                return;
            };
            $crate::$module::$rule(&db).await;
            db.finish().await;
        }
    )*};
}

#[doc(hidden)]
#[macro_export]
macro_rules! __stamp_events {
    ($backend:ident; $($rule:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $rule() {
            let name = concat!("ev_", stringify!($backend), "::", stringify!($rule));
            let Some(db) = $crate::backends::$backend(name).await else {
                return;
            };
            $crate::events::$rule(&db).await;
            db.finish().await;
        }
    )*};
}

#[doc(hidden)]
#[macro_export]
macro_rules! __stamp {
    ($backend:ident; $($rule:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $rule() {
            let name = concat!(stringify!($backend), "::", stringify!($rule));
            let Some(db) = $crate::backends::$backend(name).await else {
                return;
            };
            $crate::suite::$rule(&db).await;
            db.finish().await;
        }
    )*};
}
