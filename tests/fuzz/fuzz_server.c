/* fuzz_server: libFuzzer target for the server-to-client tokenizer. */
#include <stdint.h>

#include "fuzz_driver.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Parse one input as responses from a server. */
int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	fuzz_run(IMAP_DIR_SERVER, data, size);
	return 0;
}
