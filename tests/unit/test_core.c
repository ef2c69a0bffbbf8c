/* Unit tests for the small core pieces: zero detection, size parsing,
 * endpoint parsing, output-format rule. */
#include "unit.h"

#include "../../cmd/endpoint.h"
#include "../../core/units.h"
#include "../../core/zero.h"
#include "../../formats/image.h"

#include <string.h>

static void test_zero(void)
{
	static unsigned char buf[65536];
	memset(buf, 0, sizeof buf);
	CHECK("all-zero buffer is zero", buf_is_zero(buf, sizeof buf));
	CHECK("empty buffer is zero", buf_is_zero(buf, 0));
	buf[65535] = 1;
	CHECK("last byte set is not zero", !buf_is_zero(buf, sizeof buf));
	buf[65535] = 0;
	buf[3] = 7;
	CHECK("byte in head is not zero", !buf_is_zero(buf, sizeof buf));
	CHECK("short buffer with data", !buf_is_zero(buf, 5));
	buf[3] = 0;
	buf[8192 + 17] = 1; /* third 4K grain holds data */
	CHECK("zero run stops at data grain", zero_run(buf, sizeof buf, 4096, true) == 8192);
	CHECK("data run is one grain", zero_run(buf + 8192, sizeof buf - 8192, 4096, false) == 4096);
	CHECK("odd tail grain counted", zero_run(buf, 8192 + 100, 4096, true) == 8192);
}

static void test_sizes(void)
{
	uint64_t v = 0;
	CHECK("plain number", parse_size("512", &v) == 0 && v == 512);
	CHECK("K suffix", parse_size("64K", &v) == 0 && v == 65536);
	CHECK("MiB suffix", parse_size("8MiB", &v) == 0 && v == 8u << 20);
	CHECK("G suffix", parse_size("2G", &v) == 0 && v == 2ull << 30);
	CHECK("junk refused", parse_size("12Q", &v) < 0);
	CHECK("empty refused", parse_size("", &v) < 0);
	CHECK("negative refused", parse_size("-1", &v) < 0);
	CHECK("overflow refused", parse_size("99999999999999T", &v) < 0);
}

static void test_endpoints(void)
{
	struct endpoint e;
	CHECK("local path", endpoint_parse("disk.raw", &e) == 0 && e.kind == EP_LOCAL &&
				    strcmp(e.path, "disk.raw") == 0);
	endpoint_free(&e);
	CHECK("colon after slash is local", endpoint_parse("./a:b", &e) == 0 && e.kind == EP_LOCAL);
	endpoint_free(&e);
	CHECK("stream", endpoint_parse("-", &e) == 0 && e.kind == EP_STREAM);
	endpoint_free(&e);
	CHECK("host:path", endpoint_parse("backup:/srv/d.qcow2", &e) == 0 && e.kind == EP_REMOTE &&
				   strcmp(e.host, "backup") == 0 && !e.user &&
				   strcmp(e.path, "/srv/d.qcow2") == 0);
	endpoint_free(&e);
	CHECK("user@host:path", endpoint_parse("root@10.0.0.1:d.raw", &e) == 0 &&
					strcmp(e.user, "root") == 0 && strcmp(e.host, "10.0.0.1") == 0 &&
					strcmp(e.path, "d.raw") == 0);
	endpoint_free(&e);
	CHECK("ipv6", endpoint_parse("u@[::1]:/x.raw", &e) == 0 && e.kind == EP_REMOTE &&
			      strcmp(e.host, "::1") == 0 && strcmp(e.user, "u") == 0 &&
			      strcmp(e.path, "/x.raw") == 0);
	endpoint_free(&e);
	CHECK("ipv6 without path refused", endpoint_parse("[::1]", &e) < 0);
	CHECK("host: is the remote home directory (scp)", endpoint_parse("host:", &e) == 0 &&
							     strcmp(e.path, ".") == 0);
	endpoint_free(&e);
	CHECK("ssh:// URL", endpoint_parse("ssh://me@backup:2222/srv/x.qcow2", &e) == 0 &&
				    e.kind == EP_REMOTE && strcmp(e.user, "me") == 0 &&
				    strcmp(e.host, "backup") == 0 && e.port == 2222 &&
				    strcmp(e.path, "/srv/x.qcow2") == 0);
	endpoint_free(&e);
	CHECK("ssh:// URL with ~", endpoint_parse("ssh://backup/~/x.raw", &e) == 0 &&
					   !e.user && e.port == 0 && strcmp(e.path, "~/x.raw") == 0);
	endpoint_free(&e);
	CHECK("ssh:// URL with [v6]:port", endpoint_parse("ssh://[::1]:22/x", &e) == 0 &&
						   strcmp(e.host, "::1") == 0 && e.port == 22);
	endpoint_free(&e);
	CHECK("ssh:// URL without a path refused", endpoint_parse("ssh://host", &e) < 0);
	CHECK("ssh:// URL with a bad port refused", endpoint_parse("ssh://host:99999/x", &e) < 0);
	CHECK("ssh:// URL with a bad port refused (text)", endpoint_parse("ssh://host:22x/x", &e) < 0);
}

static void test_format_rule(void)
{
	CHECK("-O wins", image_output_format(FMT_RAW, "x.qcow2", FMT_QCOW2, FMT_QCOW2) == FMT_RAW);
	CHECK("extension .qcow2", image_output_format(FMT_AUTO, "x.qcow2", FMT_RAW, FMT_RAW) == FMT_QCOW2);
	CHECK("extension .img", image_output_format(FMT_AUTO, "x.img", FMT_QCOW2, FMT_QCOW2) == FMT_RAW);
	CHECK("existing format", image_output_format(FMT_AUTO, "x", FMT_QCOW2, FMT_RAW) == FMT_QCOW2);
	CHECK("source format", image_output_format(FMT_AUTO, "x", FMT_AUTO, FMT_QCOW2) == FMT_QCOW2);
}

int main(void)
{
	test_zero();
	test_sizes();
	test_endpoints();
	test_format_rule();
	UNIT_DONE();
}
