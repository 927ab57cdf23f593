'use strict';
/*
 * imapflow (npm) as a real client of imapgate, driven by
 * ../test_guard_imapflow.py over stdin/stdout:
 *
 *   connect (TLS) -> LOGIN -> read message 1  -> prints "READ <subject>"
 *                                                then "KILL-NOW"
 *   (the test kills the session's backend process)
 *   'close' event                             -> prints "CLOSED <byeReason>"
 *   reconnect -> LOGIN -> read message 1      -> prints "READ-AGAIN <subject>"
 *   LOGOUT, exit 0.   Any error or the deadline: "ERROR ...", exit 1.
 *
 * Usage: node guard_imapflow.js PORT USER PASS
 */
const { say, fail, deadline, connect: login } = require('./imapflow_client');

const DEADLINE_MS = 30000;     // the whole run
const CLOSE_WAIT_MS = 10000;   // for the connection to close after the kill

const [port, user, pass] = process.argv.slice(2);

deadline(DEADLINE_MS);

/* A connected, logged-in client. */
function connect() {
    return login(port, user, pass);
}

/* Subject of message 1 of INBOX. */
async function readFirst(client) {
    const lock = await client.getMailboxLock('INBOX');
    try {
        const msg = await client.fetchOne('1', { envelope: true, source: true });
        if (!msg || !msg.source || !msg.source.length) {
            fail('message 1 has no source');
        }
        return msg.envelope.subject;
    } finally {
        lock.release();
    }
}

/* Wait for the next line on stdin. */
function nextLine() {
    return new Promise(resolve => {
        process.stdin.once('data', d => resolve(String(d).trim()));
    });
}

/* The whole scenario. */
async function main() {
    const first = await connect();
    say('READ ' + (await readFirst(first)));
    const closed = new Promise((resolve, reject) => {
        first.once('close', resolve);
        setTimeout(() => reject(new Error('no close event')), CLOSE_WAIT_MS).unref();
    });
    say('KILL-NOW');
    if ((await nextLine()) !== 'KILLED') {
        fail('unexpected input');
    }
    // A command on the dead session must fail, never succeed.
    try {
        await first.noop();
    } catch (err) {
        say('NOOP-FAILED ' + err.message);
    }
    await closed;
    say('CLOSED ' + (first.byeReason || '-'));
    const second = await connect();
    say('READ-AGAIN ' + (await readFirst(second)));
    await second.logout();
    process.exit(0);
}

main().catch(err => fail(err && err.stack ? err.stack.split('\n')[0] : String(err)));
