/*
** Linked into the sqlite3_rsync helper next to the unmodified
** tool/sqlite3_rsync.c: gives every database connection the helper opens a
** busy timeout.
**
** Why: sqlite3_rsync sets none, so on a rollback-journal ORIGIN a writer's
** commit in flight makes the sync fail at once with "database is locked",
** and so does a reader holding a rollback-journal REPLICA when the replica
** side commits. With a timeout the helper waits for the lock, the way any
** well-behaved SQLite client does; the sync stream is unchanged.
**
** SQLRSYNC_BUSY_TIMEOUT_MS sets the wait in milliseconds (default 10000;
** 0 gives sqlite3_rsync's own behaviour of not waiting at all).
*/
#include <stdlib.h>
#include "sqlite3.h"

static int sqlrsync_busy_ms = 10000;

static int sqlrsync_set_busy_timeout(
  sqlite3 *db,
  char **pzErrMsg,
  const struct sqlite3_api_routines *pApi
){
  (void)pzErrMsg;
  (void)pApi;
  if( sqlrsync_busy_ms>0 ) sqlite3_busy_timeout(db, sqlrsync_busy_ms);
  return SQLITE_OK;
}

/* Runs before main(): register the hook for every connection opened. */
__attribute__((constructor))
static void sqlrsync_register_busy_timeout(void){
  const char *z = getenv("SQLRSYNC_BUSY_TIMEOUT_MS");
  if( z && z[0] ) sqlrsync_busy_ms = atoi(z);
  sqlite3_auto_extension((void(*)(void))sqlrsync_set_busy_timeout);
}
