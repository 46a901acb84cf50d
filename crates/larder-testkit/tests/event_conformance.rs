//! The event-store conformance suite, stamped for every backend.

larder_testkit::events_conformance!(memory);
larder_testkit::events_conformance!(sqlite);
larder_testkit::events_conformance!(postgres);
