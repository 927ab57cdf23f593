/* fuzz_config: libFuzzer target for the YAML configuration loader. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/*
 * Inputs larger than this are skipped: the loader refuses files over 4 MiB
 * anyway, and big inputs only slow the fuzzer down.
 */
#define FUZZ_CONFIG_MAX	(64 * 1024)

static char	fuzz_config_path[64];

/* Make a private temp file for the inputs and keep name lookups fast. */
int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
	int fd;

	(void)argc;
	(void)argv;
	/*
	 * Backend host names go through getaddrinfo.  There is no network
	 * here, so lookups fail; one attempt with a 1 s timeout keeps a
	 * name that reaches DNS from stalling the run.
	 */
	setenv("RES_OPTIONS", "attempts:1 timeout:1", 1);
	snprintf(fuzz_config_path, sizeof(fuzz_config_path), "/tmp/fuzz_config.XXXXXX");
	fd = mkstemp(fuzz_config_path);
	if (fd < 0) {
		perror("mkstemp");
		abort();
	}
	close(fd);
	return 0;
}

/* Write one input to the temp file and load it as a configuration. */
int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct config_errors errs;
	struct config *cf;
	FILE *f;

	if (size > FUZZ_CONFIG_MAX)
		return 0;
	f = fopen(fuzz_config_path, "wb");
	if (f == NULL)
		abort();
	if (size > 0 && fwrite(data, 1, size, f) != size)
		abort();
	fclose(f);
	memset(&errs, 0, sizeof(errs));
	cf = config_load(fuzz_config_path, &errs);
	/* Exactly one of a configuration or a non-empty error list. */
	if ((cf == NULL) == (errs.n == 0))
		abort();
	for (size_t i = 0; i < errs.n; i++)
		if (errs.v[i].msg == NULL)
			abort();
	if (cf != NULL)
		config_free(cf);
	config_errors_free(&errs);
	return 0;
}
