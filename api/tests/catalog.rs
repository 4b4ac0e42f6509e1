//! The product catalog over HTTP, all-in-one: items created (201) and replaced (200), read,
//! listed by category a page at a time, deleted; a batch with one bad item is refused whole,
//! naming the item's field; another tenant sees nothing; no key, no catalog. (The stores' own
//! contract runs on SQLite and MariaDB: `ump_core::testing::catalog`.)

mod common;

use common::{AllInOne, KEY};
use serde_json::{Value, json};
use ump_core::testing::unique_name;

/// The products the all-in-one mode's first start stores in the default tenant.
const EXAMPLES: [&str; 4] = ["sku-1001", "sku-1002", "sku-2002", "sku-2003"];

fn shoe(i: usize) -> Value {
    json!({"id": format!("shoe-{i:02}"), "name": format!("Runner {i}"), "price": 89000 + i,
        "currency": "KRW", "url": format!("https://shop.example/p/shoe-{i:02}"),
        "category": "shoes", "attributes": {"brand": "acme"}})
}

fn ids(page: &Value) -> Vec<String> {
    page["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|i| i["id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn items_are_created_replaced_listed_and_deleted() {
    let ump = AllInOne::start("warn", &[]).await;

    // Created without an id in the body (the path's), then replaced with it.
    let body = json!({"name": "Canvas tote", "price": 19000, "currency": "KRW",
        "category": "bags", "image": "https://shop.example/i/tote.jpg"});
    let (status, created) = ump.put(KEY, "/v1/catalog/items/tote", &body).await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["id"], "tote");
    assert_eq!(created["in_stock"], true, "in stock unless told");
    let replaced = json!({"id": "tote", "name": "Canvas tote", "price": 17000,
        "currency": "KRW", "category": "bags", "in_stock": false});
    let (status, answer) = ump.put(KEY, "/v1/catalog/items/tote", &replaced).await;
    assert_eq!(status, 200, "{answer}");
    let (status, got) = ump.get(KEY, "/v1/catalog/items/tote").await;
    assert_eq!(status, 200, "{got}");
    assert_eq!(got["price"], 17000.0);
    assert_eq!(got["in_stock"], false);
    assert!(
        got.get("image").is_none(),
        "a replacement is the whole item"
    );

    // An id in the body other than the path's, a bad field, an unknown one, bad JSON.
    let (status, problem) = ump
        .put(
            KEY,
            "/v1/catalog/items/tote",
            &json!({"id": "bag", "name": "x"}),
        )
        .await;
    assert_eq!((status, problem["field"].as_str()), (422, Some("id")));
    let (status, problem) = ump
        .put(
            KEY,
            "/v1/catalog/items/x",
            &json!({"name": "x", "currency": "won"}),
        )
        .await;
    assert_eq!((status, problem["field"].as_str()), (422, Some("currency")));
    let (status, problem) = ump
        .put(
            KEY,
            "/v1/catalog/items/x",
            &json!({"name": "x", "colour": "red"}),
        )
        .await;
    assert_eq!(status, 422, "{problem}");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("colour"),
        "{problem}"
    );
    let response = ump
        .http
        .put(format!("{}/v1/catalog/items/x", ump.url))
        .bearer_auth(KEY)
        .header("content-type", "application/json")
        .body("{\"name\": ")
        .send()
        .await
        .expect("PUT");
    assert_eq!(response.status(), 400);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );

    // A batch: 25 shoes and the tote again.
    let mut items: Vec<Value> = (0..25).map(shoe).collect();
    items.push(replaced.clone());
    let (status, counts) = ump
        .post(KEY, "/v1/catalog/items", &json!({ "items": items }))
        .await;
    assert_eq!(status, 200, "{counts}");
    assert_eq!(counts, json!({"created": 25, "updated": 1}));

    // Shoes, ten at a time, in id order; then everything.
    let mut seen = Vec::new();
    let mut path = "/v1/catalog/items?category=shoes&limit=10".to_owned();
    loop {
        let (status, page) = ump.get(KEY, &path).await;
        assert_eq!(status, 200, "{page}");
        seen.extend(ids(&page));
        match page["next"].as_str() {
            Some(next) => path = format!("/v1/catalog/items?category=shoes&limit=10&after={next}"),
            None => break,
        }
    }
    let expected: Vec<String> = (0..25).map(|i| format!("shoe-{i:02}")).collect();
    assert_eq!(seen, expected);
    let (status, all) = ump.get(KEY, "/v1/catalog/items").await;
    assert_eq!(status, 200, "{all}");
    assert_eq!(ids(&all).len(), 26 + EXAMPLES.len(), "{all}");
    assert_eq!(all["next"], Value::Null);
    for bad in ["0", "501", "many"] {
        let (status, problem) = ump
            .get(KEY, &format!("/v1/catalog/items?limit={bad}"))
            .await;
        assert_eq!((status, problem["field"].as_str()), (422, Some("limit")));
    }

    // Deleted once.
    let (status, _) = ump.delete(KEY, "/v1/catalog/items/shoe-03").await;
    assert_eq!(status, 204);
    let (status, problem) = ump.delete(KEY, "/v1/catalog/items/shoe-03").await;
    assert_eq!(status, 404, "{problem}");
    let (status, problem) = ump.get(KEY, "/v1/catalog/items/shoe-03").await;
    assert_eq!(status, 404, "{problem}");
    assert_eq!(problem["status"], 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_with_one_bad_item_writes_nothing() {
    let ump = AllInOne::start("warn", &[]).await;
    let mut bad = shoe(1);
    bad["price"] = json!(-1);
    let (status, problem) = ump
        .post(
            KEY,
            "/v1/catalog/items",
            &json!({"items": [shoe(0), bad, shoe(2)]}),
        )
        .await;
    assert_eq!(status, 422, "{problem}");
    assert_eq!(problem["field"], "items[1].price");
    let (_, page) = ump.get(KEY, "/v1/catalog/items").await;
    assert_eq!(ids(&page), EXAMPLES, "nothing stored but the examples");

    let (status, problem) = ump
        .post(KEY, "/v1/catalog/items", &json!({"items": []}))
        .await;
    assert_eq!((status, problem["field"].as_str()), (422, Some("items")));
    let many: Vec<Value> = (0..1001)
        .map(|i| json!({"id": format!("i{i}"), "name": "x"}))
        .collect();
    let (status, problem) = ump
        .post(KEY, "/v1/catalog/items", &json!({ "items": many }))
        .await;
    assert_eq!((status, problem["field"].as_str()), (422, Some("items")));
    let most: Vec<Value> = (0..1000)
        .map(|i| json!({"id": format!("i{i:04}"), "name": "x"}))
        .collect();
    let (status, counts) = ump
        .post(KEY, "/v1/catalog/items", &json!({ "items": most }))
        .await;
    assert_eq!(status, 200, "{counts}");
    assert_eq!(counts["created"], 1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_see_nothing_of_each_others_catalog_and_a_key_is_required() {
    let ump = AllInOne::start("warn", &[]).await;
    let (other, _) = ump.create_key(&unique_name("tenant"));
    ump.wait_key_works(&other).await;
    let (status, _) = ump.put(KEY, "/v1/catalog/items/shoe-01", &shoe(1)).await;
    assert_eq!(status, 201);

    let (status, _) = ump.get(&other, "/v1/catalog/items/shoe-01").await;
    assert_eq!(status, 404);
    let (status, page) = ump.get(&other, "/v1/catalog/items").await;
    assert_eq!(status, 200);
    assert!(ids(&page).is_empty(), "{page}");
    let (status, _) = ump.delete(&other, "/v1/catalog/items/shoe-01").await;
    assert_eq!(status, 404);
    // The same id is another tenant's own item.
    let (status, _) = ump.put(&other, "/v1/catalog/items/shoe-01", &shoe(1)).await;
    assert_eq!(status, 201);
    let (status, _) = ump.get(KEY, "/v1/catalog/items/shoe-01").await;
    assert_eq!(status, 200);

    for (method, path) in [
        ("GET", "/v1/catalog/items"),
        ("POST", "/v1/catalog/items"),
        ("GET", "/v1/catalog/items/shoe-01"),
        ("PUT", "/v1/catalog/items/shoe-01"),
        ("DELETE", "/v1/catalog/items/shoe-01"),
    ] {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let response = ump
            .http
            .request(method.clone(), format!("{}{path}", ump.url))
            .json(&shoe(1))
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), 401, "{method} {path}");
    }
    let (status, _) = ump.get(KEY, "/v1/catalog/items/shoe-01").await;
    assert_eq!(status, 200, "still there");
}
