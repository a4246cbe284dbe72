/* A producer and a push consumer through dashi's C ABI.
 *
 *   cargo build --release -p dashi-ffi
 *   cc examples/c/tasks.c -Iinclude -Ltarget/release -ldashi_ffi -Wl,-rpath,$PWD/target/release -o tasks && ./tasks memory://
 *
 * Run it with `local:///tmp/tasks` to use a store shared by processes.
 */
#include "dashi.h"

#include <stdio.h>
#include <string.h>

static int fail(const char *what, dashi_result r) {
  char text[128];
  dashi_result_message(r, text, sizeof text);
  fprintf(stderr, "%s: %s\n", what, text);
  return 1;
}

static void on_task(void *userdata, dashi_message *m) {
  int *done = userdata;
  const uint8_t *body;
  size_t len;
  dashi_message_body(m, &body, &len);
  printf("task %.*s (priority %u)\n", (int)len, (const char *)body,
         dashi_message_priority(m));
  dashi_ack(m);
  dashi_message_free(m);
  (*done)++;
}

int main(int argc, char **argv) {
  const char *url = argc > 1 ? argv[1] : "memory://";
  dashi_connection *c = NULL;
  dashi_channel *ch = NULL;
  dashi_result r;
  if ((r = dashi_connection_open(url, &c)) != DASHI_OK)
    return fail("connect", r);
  if ((r = dashi_channel_open(c, &ch)) != DASHI_OK)
    return fail("channel", r);
  if ((r = dashi_queue_declare(ch, "tasks", 9)) != DASHI_OK)
    return fail("declare", r);
  const char *tasks[] = {"resize", "email", "invoice"};
  const uint8_t prios[] = {1, 5, 9};
  for (int i = 0; i < 3; i++) {
    r = dashi_publish_async(ch, "", "tasks", (const uint8_t *)tasks[i],
                            strlen(tasks[i]), prios[i]);
    if (r != DASHI_OK)
      return fail("publish", r);
  }
  if ((r = dashi_wait_for_confirms(ch, 5000, NULL)) != DASHI_OK)
    return fail("confirms", r);
  int done = 0;
  uint64_t tag;
  if ((r = dashi_consume(ch, "tasks", 10, on_task, &done, &tag)) != DASHI_OK)
    return fail("consume", r);
  while (done < 3)
    if ((r = dashi_drain_events(c, 1000)) != DASHI_OK)
      return fail("drain", r);
  dashi_channel_free(ch);
  dashi_connection_free(c);
  return 0;
}
