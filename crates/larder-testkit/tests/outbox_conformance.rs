//! The outbox conformance suite, stamped for every backend.

larder_testkit::outbox_conformance!(memory);
larder_testkit::outbox_conformance!(sqlite);
larder_testkit::outbox_conformance!(postgres);
