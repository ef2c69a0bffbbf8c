/* The undo journal: what makes an in-place update of an image file atomic
 * from the user's point of view.
 *
 * Before any byte of the destination file that existed when the update
 * began is overwritten, punched or truncated away, its old contents are
 * appended to a journal beside it (.NAME.sparsync-undo) and made durable.
 * The update is committed by removing the journal once the destination is
 * flushed. Whatever stops the run before that (a signal, kill -9, a dropped
 * link, a full disk, power loss), the journal is still there: the failed
 * run itself, the next run on that destination, or `sparsync recover DST`
 * writes the old bytes back in reverse order and truncates the file to its
 * old size, giving back yesterday's image byte for byte. The journal works
 * below the image format, so raw and qcow2 destinations (data, tables,
 * header) are covered alike.
 *
 * Cost: the old contents of what changes are read and written once more,
 * plus one fdatasync of the journal per protected write; nothing for what
 * does not change, nothing for bytes beyond the old end of file.
 *
 * A live run holds an exclusive flock on its journal: recovery never
 * touches the journal of a run still going, and a second update of the
 * same destination is refused while one runs. */
#ifndef SPARSYNC_UNDO_H
#define SPARSYNC_UNDO_H

#include <stdbool.h>
#include <stdint.h>

struct undo;

/* The journal's path for the file at path (malloc'd; NULL: out of memory). */
char *undo_journal_path(const char *path);

/* Start journaling an update of the file at path (symlinks already
 * resolved). shown names it in messages. NULL with sp_errmsg() set. */
struct undo *undo_begin(const char *path, const char *shown);
/* [off, off+len) of the destination is about to change: save what it holds
 * now (the part inside the old size) durably. Thread-safe. */
int undo_protect(struct undo *u, uint64_t off, uint64_t len);
/* The destination is flushed: drop the journal (and fsync the directory). */
int undo_commit(struct undo *u);
/* Put the old image back now, then drop the journal. On failure the
 * journal stays for the next run. Frees u either way. */
int undo_rollback(struct undo *u);

/* If path has a journal left by a run that is gone, roll it back.
 * *recovered tells whether there was one. -1 when a live run holds it
 * (another sparsync is updating path) or rolling back failed. */
int undo_recover(const char *path, const char *shown, bool *recovered);
/* path has a journal beside it: an update was interrupted there and the
 * file may be a mix of old and new until recovered. */
bool undo_pending(const char *path);

#endif
