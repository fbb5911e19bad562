//! One-time tokens: what a streaming URL stands for, good for one use within [`TOKEN_TTL`].

use std::collections::HashMap;
use std::io::Read as _;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a URL returned by Exec, Attach or PortForward stays usable.
pub const TOKEN_TTL: Duration = Duration::from_secs(60);

/// Tokens minted and not yet used, with what they stand for.
pub struct Tokens<T> {
    pending: Mutex<HashMap<String, (Instant, T)>>,
}

impl<T> Default for Tokens<T> {
    fn default() -> Self {
        Tokens {
            pending: Mutex::default(),
        }
    }
}

impl<T> Tokens<T> {
    /// Records `request` under a new random token (URL-safe) and returns the token.
    pub fn mint(&self, request: T) -> std::io::Result<String> {
        self.mint_at(request, Instant::now())
    }

    fn mint_at(&self, request: T, now: Instant) -> std::io::Result<String> {
        let mut bytes = [0u8; 24];
        std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
        let token = hex::encode(bytes);
        let mut pending = self.lock();
        pending.retain(|_, (at, _)| now.duration_since(*at) < TOKEN_TTL);
        pending.insert(token.clone(), (now, request));
        Ok(token)
    }

    /// The request `token` stands for, removing it: None if it is unknown, used or expired.
    pub fn take(&self, token: &str) -> Option<T> {
        self.take_at(token, Instant::now())
    }

    fn take_at(&self, token: &str, now: Instant) -> Option<T> {
        let (at, request) = self.lock().remove(token)?;
        (now.duration_since(at) < TOKEN_TTL).then_some(request)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Instant, T)>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_use_and_expiring() {
        let tokens = Tokens::default();
        let now = Instant::now();
        let a = tokens.mint_at(1, now).unwrap();
        let b = tokens.mint_at(2, now).unwrap();
        assert_ne!(a, b);
        assert_eq!(tokens.take_at(&a, now), Some(1));
        assert_eq!(tokens.take_at(&a, now), None, "a token is good once");
        assert_eq!(tokens.take_at(&b, now + TOKEN_TTL), None, "expired");
        assert_eq!(tokens.take_at("nope", now), None);
        let c = tokens.mint_at(3, now).unwrap();
        tokens.mint_at(4, now + TOKEN_TTL).unwrap();
        assert_eq!(tokens.take_at(&c, now), None, "expired tokens are dropped");
    }
}
