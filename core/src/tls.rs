//! One TLS crypto provider for the whole process (rustls with ring), installed explicitly at
//! start: with several providers linked in, rustls refuses to guess.

/// Installs ring as the process's rustls provider; a no-op when one is installed already.
pub fn install_crypto_provider() {
    // Err means a provider is already installed, which is all we need.
    let _ = rustls::crypto::ring::default_provider().install_default();
}
