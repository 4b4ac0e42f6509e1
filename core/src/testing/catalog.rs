//! The behaviour every `CatalogStore` must have, run against MySQL (`core/tests/mysql_history.rs`)
//! and SQLite (`crate::catalog`'s tests): created vs replaced, items by id in one call, pages by
//! id with and without a category, deletion, and tenants apart.

use crate::catalog::{CatalogStore, Upserted};
use chrono::Utc;
use ump_automation::recommend::CatalogItem;

fn item(id: &str, category: Option<&str>, price: f64) -> CatalogItem {
    let mut value = serde_json::json!({"id": id, "name": format!("Item {id}"), "price": price,
        "currency": "KRW", "url": format!("https://shop.example/{}", id.replace(' ', "%20")),
        "attributes": {"brand": "acme"}});
    if let Some(category) = category {
        value["category"] = category.into();
    }
    let item: CatalogItem = serde_json::from_value(value).expect("an item");
    item.validate("").expect("valid");
    item
}

fn ids(items: &[CatalogItem]) -> Vec<&str> {
    items.iter().map(|i| i.id.as_str()).collect()
}

pub async fn upserts_pages_and_tenants(store: &dyn CatalogStore) {
    let now = Utc::now();
    assert_eq!(
        store.item("t1", "a").await.expect("item"),
        None,
        "an empty catalog"
    );

    // Created, then replaced: the stored item is the new one, whole.
    let first = store
        .put_items("t1", &[item("a", Some("shoes"), 10.0)], now)
        .await
        .expect("put");
    assert_eq!(
        first,
        [Upserted {
            id: "a".into(),
            created: true
        }]
    );
    let mut changed = item("a", Some("bags"), 12.5);
    changed.in_stock = false;
    changed.attributes.clear();
    let again = store
        .put_items("t1", std::slice::from_ref(&changed), now)
        .await
        .expect("put again");
    assert!(!again[0].created, "a replacement");
    assert_eq!(store.item("t1", "a").await.expect("item"), Some(changed));

    // A batch: new and stored items, and an id twice (the later wins).
    let mut batch: Vec<CatalogItem> = (0..12)
        .map(|i| {
            let category = if i % 2 == 0 { "shoes" } else { "hats" };
            item(&format!("item-{i:02}"), Some(category), f64::from(i))
        })
        .collect();
    batch.push(item("a", None, 1.0));
    batch.push(item("no-category", None, 3.0));
    batch.push(item("item-00", Some("shoes"), 99.0));
    let written = store.put_items("t1", &batch, now).await.expect("batch");
    let created: Vec<bool> = written.iter().map(|u| u.created).collect();
    let mut expected = vec![true; 12];
    expected.extend([false, true, false]);
    assert_eq!(created, expected);
    assert_eq!(
        store
            .item("t1", "item-00")
            .await
            .expect("item")
            .and_then(|i| i.price),
        Some(99.0)
    );
    assert_eq!(
        store
            .item("t1", "a")
            .await
            .expect("item")
            .map(|i| i.category),
        Some(None),
        "the category went with the replacement"
    );

    // Items by id: the missing ones are not there.
    let wanted: Vec<String> = ["item-03", "missing", "a"].map(String::from).to_vec();
    let found = store.items("t1", &wanted).await.expect("items");
    assert_eq!(found.keys().collect::<Vec<_>>(), ["a", "item-03"]);
    assert_eq!(found["item-03"].category.as_deref(), Some("hats"));
    assert!(store.items("t1", &[]).await.expect("none").is_empty());

    // Pages in id order, all items and by category.
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = store
            .list("t1", None, after.as_deref(), 5)
            .await
            .expect("list");
        assert!(page.items.len() <= 5);
        seen.extend(page.items.iter().map(|i| i.id.clone()));
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    let mut all: Vec<String> = (0..12).map(|i| format!("item-{i:02}")).collect();
    all.extend(["a".to_owned(), "no-category".to_owned()]);
    all.sort();
    assert_eq!(seen, all);
    let shoes = store
        .list("t1", Some("shoes"), None, 4)
        .await
        .expect("shoes");
    assert_eq!(
        ids(&shoes.items),
        ["item-00", "item-02", "item-04", "item-06"]
    );
    assert_eq!(shoes.next.as_deref(), Some("item-06"));
    let rest = store
        .list("t1", Some("shoes"), shoes.next.as_deref(), 4)
        .await
        .expect("more shoes");
    assert_eq!(ids(&rest.items), ["item-08", "item-10"]);
    assert_eq!(rest.next, None, "no empty last page");
    let exact = store
        .list("t1", Some("shoes"), None, 6)
        .await
        .expect("six shoes");
    assert_eq!(exact.items.len(), 6);
    assert_eq!(exact.next, None, "a page that ends the list says so");
    assert!(
        store
            .list("t1", Some("no such"), None, 10)
            .await
            .expect("none")
            .items
            .is_empty()
    );

    // Ids differ byte for byte: a trailing space is another item.
    let spaced = store
        .put_items("t1", &[item("a ", None, 2.0)], now)
        .await
        .expect("put");
    assert!(spaced[0].created, "`a ` is not `a`");
    assert_eq!(
        store
            .item("t1", "a ")
            .await
            .expect("item")
            .and_then(|i| i.price),
        Some(2.0)
    );
    assert!(store.delete_item("t1", "a ").await.expect("delete"));

    // Tenants apart: t2 sees, replaces and deletes nothing of t1's.
    assert_eq!(store.item("t2", "a").await.expect("item"), None);
    assert!(store.items("t2", &wanted).await.expect("items").is_empty());
    assert!(
        store
            .list("t2", None, None, 100)
            .await
            .expect("list")
            .items
            .is_empty()
    );
    assert!(!store.delete_item("t2", "a").await.expect("delete"));
    let theirs = store
        .put_items("t2", &[item("a", Some("t2"), 5.0)], now)
        .await
        .expect("put");
    assert!(theirs[0].created, "the same id in another tenant is new");
    assert_eq!(
        store
            .item("t1", "a")
            .await
            .expect("item")
            .and_then(|i| i.price),
        Some(1.0)
    );

    // Deleted once.
    assert!(store.delete_item("t1", "a").await.expect("delete"));
    assert!(!store.delete_item("t1", "a").await.expect("delete again"));
    assert_eq!(store.item("t1", "a").await.expect("item"), None);
    assert!(store.item("t2", "a").await.expect("item").is_some());
}
