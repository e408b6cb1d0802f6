-- 002_seq_reserve.sql - the durable floor of per-conversation sequence numbers.
--
-- Redis hands out seqs (logic/lg_seq.c), but only up to a ceiling that was first
-- committed here: every seq ever handed out for conv_id is <= reserved_upto.  After
-- Redis loses its counters (restart without persistence, eviction, FLUSHALL) the
-- counter restarts from reserved_upto, above everything already given out, even
-- messages still in RabbitMQ and not yet in `messages`.  Raised in steps (a lease of
-- many seqs per round trip); never lower or delete a row while the service runs.
CREATE TABLE conv_seq_reserve (
    conv_id       VARCHAR(48)     CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    reserved_upto BIGINT UNSIGNED NOT NULL,
    PRIMARY KEY (conv_id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;

INSERT INTO schema_migrations (version, name) VALUES (2, 'seq_reserve');
