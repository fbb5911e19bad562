//! Pod sandboxes: their namespaces (network through the network service, ipc and uts pinned by
//! bind mounts), records, status and lifecycle.
