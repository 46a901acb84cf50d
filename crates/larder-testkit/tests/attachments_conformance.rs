//! The attachment rules (blobs staged in the unit of work, references in SQL, objects in a
//! filesystem store), stamped for every backend.

larder_testkit::attachments_conformance!(memory);
larder_testkit::attachments_conformance!(sqlite);
larder_testkit::attachments_conformance!(postgres);
