//! The shared store suite against the memory store: two handles on one
//! store (clones), as every worker of one server has.

#![allow(missing_docs, clippy::unwrap_used)]

use async_op::MemoryStore;

async_op_tests::store_suite!(async {
    let store = MemoryStore::new();
    (store.clone(), store)
});
