//! The streaming server: the URLs Exec, Attach and PortForward return, and the SPDY and
//! WebSocket protocols kubelet's clients speak on them.
