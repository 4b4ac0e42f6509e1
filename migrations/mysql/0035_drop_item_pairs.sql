-- Pair rows are kept in item_people.partners since 0033.
DROP TABLE IF EXISTS item_pairs;
