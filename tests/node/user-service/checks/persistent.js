// Persistent subscriptions through @eventstore/db-client 4.0.0, the seed's client, which
// creates stream groups in the legacy request shape (kurrentdb-wire.md §6.1). Run by
// tests/kurrentdb.rs with ESDB_CONNECTION_STRING set; exits non-zero on the first failed
// check, and prints what it saw as one JSON line on success.
'use strict';
const assert = require('node:assert/strict');
const {
  EventStoreDBClient,
  jsonEvent,
  persistentSubscriptionToStreamSettingsFromDefaults,
  PersistentSubscriptionExistsError,
  PersistentSubscriptionDoesNotExistError,
  START,
  PARK,
} = require('@eventstore/db-client');

const PATIENCE_MS = 60_000;

async function until(what, check) {
  const deadline = Date.now() + PATIENCE_MS;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

async function main() {
  const client = EventStoreDBClient.connectionString(process.env.ESDB_CONNECTION_STRING);
  const stream = 'account-1';
  const group = 'statements';
  await client.appendToStream(
    stream,
    [1, 2, 3].map((n) => jsonEvent({ type: 'money-deposited', data: { n } }))
  );
  // Same category, another stream: never delivered to the group.
  await client.appendToStream('account-2', jsonEvent({ type: 'money-deposited', data: { n: 99 } }));
  const settings = persistentSubscriptionToStreamSettingsFromDefaults({
    startFrom: START,
    maxRetryCount: 2,
  });
  await client.createPersistentSubscriptionToStream(stream, group, settings);
  await assert.rejects(
    client.createPersistentSubscriptionToStream(stream, group, settings),
    PersistentSubscriptionExistsError
  );

  const subscription = client.subscribeToPersistentSubscriptionToStream(stream, group, {
    bufferSize: 10,
  });
  const seen = [];
  for await (const resolved of subscription) {
    const n = resolved.event.data.n;
    seen.push([n, resolved.retryCount]);
    // Park the first delivery of 2; a replayed parked event comes as a fresh one.
    if (n === 2 && !seen.slice(0, -1).some(([m]) => m === 2)) {
      await subscription.nack(PARK, 'statement failed', resolved);
    } else {
      await subscription.ack(resolved);
    }
    if (seen.length === 3) {
      const info = await until('the parked event', async () => {
        const info = await client.getPersistentSubscriptionToStreamInfo(stream, group);
        return info.stats.parkedMessageCount === 1n ? info : null;
      });
      assert.equal(info.eventSource, stream);
      assert.equal(info.groupName, group);
      assert.equal(info.settings.maxRetryCount, 2);
      assert.equal(info.connections.length, 1);
      await client.replayParkedMessagesToStream(stream, group);
    }
    if (seen.length === 4) break;
  }
  await subscription.unsubscribe();
  assert.deepEqual(seen.slice(0, 3), [[1, 0], [2, 0], [3, 0]]);
  assert.deepEqual(seen[3], [2, 0]);

  const listed = await client.listPersistentSubscriptionsToStream(stream);
  assert.deepEqual(listed.map((info) => info.groupName), [group]);
  await client.deletePersistentSubscriptionToStream(stream, group);
  await assert.rejects(
    client.getPersistentSubscriptionToStreamInfo(stream, group),
    PersistentSubscriptionDoesNotExistError
  );
  await client.dispose();
  console.log(JSON.stringify({ seen }));
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
