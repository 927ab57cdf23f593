/* fuzz_client: libFuzzer target for the client-to-server tokenizer. */
#include <stdint.h>

#include "fuzz_driver.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Parse one input as commands from a client. */
int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	fuzz_run(IMAP_DIR_CLIENT, data, size);
	return 0;
}
