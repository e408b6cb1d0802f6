/*
 * lg_service.h - one logic instance: wires the modules together from a
 * config.  Today that is the batch writer (durable queue -> MySQL); the gRPC
 * API of proto/im.proto joins it next.
 *
 * Threads: create, start, stop and free from one thread (main).  The writer
 * runs on its own thread with its own AMQP and MySQL connections.
 */
#ifndef LG_SERVICE_H
#define LG_SERVICE_H

#include "im_err.h"
#include "lg_config.h"
#include "lg_writer.h"

typedef struct lg_service_s lg_service_t;

/* Builds the service from cfg (which must outlive it).  Returns NULL with a
 * log line on an invalid setting. */
lg_service_t *lg_service_new(const lg_config_t *cfg);

/* Starts the writer.  Connections are made by its thread, with retries, so a
 * broker or database that is not up yet is waited for, not fatal. */
im_err_t lg_service_start(lg_service_t *s);

/* Graceful stop: the writer flushes and acks what it holds, then everything
 * closes.  Idempotent. */
void lg_service_stop(lg_service_t *s);

/* Stops if needed and frees.  NULL is fine. */
void lg_service_free(lg_service_t *s);

void lg_service_writer_stats(lg_service_t *s, lg_writer_stats_t *out);

#endif
