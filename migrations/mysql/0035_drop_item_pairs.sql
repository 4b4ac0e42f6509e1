-- Pair rows are kept in item_people.partners since 0033.
DROP TABLE item_pairs;
