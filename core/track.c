#include "track.h"

#include "../formats/image.h"
#include "error.h"

#include <stdio.h>
#include <string.h>
#include <sys/random.h>

static void name_for(const uint8_t id[TRACK_ID_SIZE], char *out, size_t cap)
{
	static const char hex[] = "0123456789abcdef";
	int n = snprintf(out, cap, "sparsync-");
	for (int i = 0; i < TRACK_ID_SIZE && (size_t)n + 2 < cap; i++) {
		out[n++] = hex[id[i] >> 4];
		out[n++] = hex[id[i] & 15];
	}
	out[n] = '\0';
}

int track_begin(struct track *t, struct image *src, const uint8_t *dest_id, bool in_step)
{
	memset(t, 0, sizeof *t);
	if (image_bitmap_trackable(src) < 0)
		return -1;
	/* This run's bitmap is always a new one (see track.h). */
	if (getrandom(t->id, TRACK_ID_SIZE, 0) != TRACK_ID_SIZE)
		return sp_err("--track: no random bytes for an id");
	name_for(t->id, t->name, sizeof t->name);
	/* A source that marks the start (RBD) takes this run's snapshot now:
	 * what is copied is that point in time. */
	if (image_track_start(src, t->name) < 0)
		return -1;
	t->started = true;
	if (!dest_id) {
		t->how = "full: the destination records no bitmap";
		return 0;
	}
	name_for(dest_id, t->old_name, sizeof t->old_name);
	t->has_old = true;
	if (!in_step) {
		/* DST changed since (written behind our back, a failed run):
		 * compare everything; its old bitmap goes. */
		t->how = "full: the destination changed since its last sync";
		return 0;
	}
	int rc = image_dirty_bitmap(src, t->old_name, &t->map);
	if (rc == 0 && t->map.enabled) {
		t->use = true;
		t->how = "bitmap";
		return 0;
	}
	change_map_free(&t->map);
	sp_err_clear();
	if (rc == -2) {
		t->has_old = false;
		t->how = "full: the source has no bitmap for this destination";
	} else {
		t->how = rc == 0 ? "full: the bitmap was disabled"
				 : "full: the bitmap cannot be trusted (in use by a QEMU that died?)";
	}
	return 0;
}

void track_log(const struct track *t)
{
	if (t->use)
		sp_info("--track: reading only what bitmap %s marks; next: bitmap %s", t->old_name,
			t->name);
	else
		sp_info("--track: comparing everything (%s); next: bitmap %s", t->how, t->name);
}

void track_finish(struct track *t, struct image *src)
{
	t->finished = true;
	if (image_bitmap_rotate(src, t->has_old ? t->old_name : NULL, t->name) < 0)
		sp_warn("%s (the copy is complete; the next --track run compares everything)",
			sp_errmsg());
}

void track_free(struct track *t, struct image *src)
{
	if (t->started && !t->finished && src)
		image_track_cancel(src, t->name);
	t->started = false;
	change_map_free(&t->map);
}
