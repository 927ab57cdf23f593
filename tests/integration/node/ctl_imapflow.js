'use strict';
/*
 * imapflow (npm) as a real client of imapgate, driven by
 * ../test_ops_control.py over stdout:
 *
 *   connect (TLS) -> LOGIN -> SELECT INBOX    -> prints "OPEN <exists>"
 *   IDLE                                      -> prints "IDLING"
 *   (the test runs `imapgate ctl kick user U`)
 *   'close' event                             -> prints "CLOSED <byeReason>"
 *   reconnect -> LOGIN -> SELECT -> NOOP      -> prints "AGAIN <exists>"
 *   LOGOUT, exit 0.   Any error or the deadline: "ERROR ...", exit 1.
 *
 * Usage: node ctl_imapflow.js PORT USER PASS
 */
const { say, fail, deadline, connect: login } = require('./imapflow_client');

const DEADLINE_MS = 40000;     // the whole run
const CLOSE_WAIT_MS = 25000;   // for the kick to come after IDLE began

const [port, user, pass] = process.argv.slice(2);

deadline(DEADLINE_MS);

/* A connected, logged-in client. */
function connect() {
    return login(port, user, pass);
}

/* The whole scenario. */
async function main() {
    const first = await connect();
    const box = await first.mailboxOpen('INBOX');
    say('OPEN ' + box.exists);
    const closed = new Promise((resolve, reject) => {
        first.once('close', resolve);
        setTimeout(() => reject(new Error('no close event')), CLOSE_WAIT_MS).unref();
    });
    // IDLE runs until the server ends it; the kick ends the connection.
    const idling = first.idle().then(() => 'ended', err => 'failed ' + err.message);
    say('IDLING');
    await closed;
    say('IDLE-RESULT ' + (await idling));
    say('CLOSED ' + (first.byeReason || '-'));
    const second = await connect();
    const again = await second.mailboxOpen('INBOX');
    await second.noop();
    say('AGAIN ' + again.exists);
    await second.logout();
    process.exit(0);
}

main().catch(err => fail(err && err.stack ? err.stack.split('\n')[0] : String(err)));
