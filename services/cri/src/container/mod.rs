//! The containers of pod sandboxes: records, OCI specs from CRI configs, lifecycle, status,
//! stats, events and logs.
