-- 003_read_state_conv.sql - read marks looked up by conversation.
--
-- Message.Conversations shows, for each of a user's conversations, how far the OTHER
-- participants have read (the "read" ticks on one's own messages): that reads read_state by
-- conv_id, which the primary key (user_id, conv_id) cannot serve.

ALTER TABLE read_state ADD KEY k_read_state_conv (conv_id, read_seq);

INSERT INTO schema_migrations (version, name) VALUES (3, 'read_state_conv');
