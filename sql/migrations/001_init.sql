-- 001_init.sql - the initial schema.  InnoDB, utf8mb4; runs on MariaDB 10.11 and MySQL 8.0.
--
-- Conventions for every migration (scripts/infra.sh applies them in order, once each; the
-- Docker MySQL image runs them from /docker-entrypoint-initdb.d):
--   * name NNN_what.sql, never edit one that has been applied anywhere: add a new one;
--   * end with INSERT INTO schema_migrations recording its own version, so both ways of
--     applying leave the same ledger.
--
-- Ids are BIGINT UNSIGNED assigned by the application (common/im_id), not AUTO_INCREMENT:
-- the service knows a message's id before the row exists and does not need a round trip
-- to learn it.  Times are milliseconds since the epoch, the unit the protocol uses.
-- There are no foreign keys: each would make every insert on the message path lock and
-- check a parent row, and the logic service already enforces membership before writing.
-- Identifiers made by the program (conv_id, client_msg_id) are ascii_bin: compared byte
-- for byte (a case-insensitive collation would merge distinct client ids) and 1 byte per
-- character in indexes.

CREATE TABLE schema_migrations (
    version    INT UNSIGNED NOT NULL,
    name       VARCHAR(128) NOT NULL,
    applied_at TIMESTAMP    NOT NULL DEFAULT CURRENT_TIMESTAMP,
    PRIMARY KEY (version)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;

CREATE TABLE users (
    id            BIGINT UNSIGNED NOT NULL,
    username      VARCHAR(32)     NOT NULL,
    pass_hash     VARCHAR(255)    NOT NULL,  -- encoded argon2id string (libsodium)
    created_at_ms BIGINT          NOT NULL,
    deleted_at_ms BIGINT          NULL,      -- soft delete: old messages keep their sender
    PRIMARY KEY (id),
    -- Login looks users up by name.  Unique across deleted users too, so a freed name cannot
    -- be taken over to impersonate its old owner in history; case-insensitive (the table's
    -- collation) so "Alice" and "alice" are one name.
    UNIQUE KEY uk_users_username (username)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;

-- `groups` is a reserved word in MySQL 8: always quote it.
CREATE TABLE `groups` (
    id            BIGINT UNSIGNED NOT NULL,
    name          VARCHAR(64)     NOT NULL,
    owner_id      BIGINT UNSIGNED NOT NULL,
    created_at_ms BIGINT          NOT NULL,
    PRIMARY KEY (id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;

CREATE TABLE group_members (
    group_id     BIGINT UNSIGNED NOT NULL,
    user_id      BIGINT UNSIGNED NOT NULL,
    joined_at_ms BIGINT          NOT NULL,
    -- Fan-out reads all members of one group: the clustered key keeps them together.
    PRIMARY KEY (group_id, user_id),
    -- "Which groups am I in" at login.
    KEY k_group_members_user (user_id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;

CREATE TABLE messages (
    id            BIGINT UNSIGNED NOT NULL,
    -- "d:<lower user id>:<higher user id>" for a direct chat, "g:<group id>" for a group.
    conv_id       VARCHAR(48)     CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    seq           BIGINT UNSIGNED NOT NULL,  -- 1, 2, ... per conversation
    sender_id     BIGINT UNSIGNED NOT NULL,
    client_msg_id VARCHAR(64)     CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    body          TEXT            NOT NULL,
    created_at_ms BIGINT          NOT NULL,
    PRIMARY KEY (id),
    -- History is "conversation X after seq N", a range scan on this key; unique because two
    -- messages with one seq would make clients' gap detection and read marks ambiguous.
    UNIQUE KEY uk_messages_conv_seq (conv_id, seq),
    -- A client resending after a lost ack must not create a second message: the retry hits
    -- this key and the service answers with the stored message.
    UNIQUE KEY uk_messages_sender_client_msg (sender_id, client_msg_id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;

CREATE TABLE read_state (
    user_id       BIGINT UNSIGNED NOT NULL,
    conv_id       VARCHAR(48)     CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    read_seq      BIGINT UNSIGNED NOT NULL,  -- highest seq the user has read
    updated_at_ms BIGINT          NOT NULL,
    -- One read mark per user and conversation, upserted; a user's marks are read together.
    PRIMARY KEY (user_id, conv_id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;

-- A user's direct conversations.  Group conversations come from group_members; direct ones
-- have no membership table otherwise, and finding them in messages would scan it.
CREATE TABLE user_convs (
    user_id       BIGINT UNSIGNED NOT NULL,
    conv_id       VARCHAR(48)     CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    created_at_ms BIGINT          NOT NULL,
    -- Listing is by user; the key also makes "add on first message" an idempotent insert.
    PRIMARY KEY (user_id, conv_id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;

INSERT INTO schema_migrations (version, name) VALUES (1, 'init');
