//! `notify-api create-api-key`: mints a key and prints its secret once.

pub mod import_python;
pub mod rotate;

use platform::crypto::generate_api_credentials;
use platform::{db, Settings};

pub async fn create_api_key(
    settings: &Settings,
    name: &str,
    description: &str,
    admin: bool,
) -> anyhow::Result<()> {
    let name = name.trim();
    if name.is_empty() || name.len() > 128 || name.chars().any(char::is_control) {
        anyhow::bail!("--name must be 1 to 128 printable characters");
    }
    let pool = db::open(settings).await?;
    let mut scopes = vec!["send".to_string(), "read".to_string()];
    if admin {
        scopes.push("admin".to_string());
    }
    let credentials = generate_api_credentials();
    let key = db::api_keys::insert(&pool, name, description, &scopes, &credentials).await?;
    println!("API key created: {} ({})", key.name, key.id);
    println!("Scopes:     {}", scopes.join(", "));
    println!("API Key:    {}", credentials.key);
    println!("API Secret: {}", credentials.secret);
    println!("Store the secret now: it is not shown again and cannot be recovered.");
    Ok(())
}
