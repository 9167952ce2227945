import { disconnectFromEventStore } from '../core/eventstoredb';
import { router } from './routes';
import {
  handleEventInPostgresTransactionScope,
  SubscriptionToAll,
} from './core/subscription';
import { disconnectFromPostgres } from '#core/postgres';
import { insertUserWithNewEvent } from './users/syncEvent';
import { getEventStore } from '../core/eventstoredb';
import { config } from '#config';
process.once('SIGTERM', disconnectFromEventStore);
process.once('SIGTERM', disconnectFromPostgres);
import express, { Application, Router } from 'express';
import http from 'http';
import { AddressInfo } from 'net';

export const getApplication = (router: Router) => {
  const app: Application = express();
  app.use(express.json());
  app.use(
    express.urlencoded({
      extended: true,
    })
  );
  app.use(router);
  return app;
};

export const startAPI = (router: Router, port = 5000) => {
  const app = getApplication(router);
  const server = http.createServer(app);
  server.listen(port, '127.0.0.1');
  server.on('listening', () => {
    // The port too: with PORT=0 the system picks a free one.
    console.info('server up listening', (server.address() as AddressInfo).port);
  });
};

startAPI(router, config.port);

SubscriptionToAll(getEventStore, [
  handleEventInPostgresTransactionScope(insertUserWithNewEvent),
]);
