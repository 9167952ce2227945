// The seed generates this table's model with @databases/pg-schema-cli and uses it through
// @databases/pg-typed; here it is written out by hand, with the same two calls, so that the
// service needs no schema generation step against a running database.
import { Queryable, sql } from '@databases/pg';

export type User = {
  id: number;
  username: string;
  createdAt: Date;
  fullName: string;
};

export type WhereCondition<T> = Partial<T>;

export const user = (db: Queryable) => ({
  async insertOrIgnore(row: Omit<User, 'id'>): Promise<void> {
    await db.query(sql`
      INSERT INTO "user" ("username", "createdAt", "fullName")
      VALUES (${row.username}, ${row.createdAt}, ${row.fullName})
      ON CONFLICT DO NOTHING`);
  },
  // Like pg-typed's findOne: null when no row matches, an error when more than one does.
  async findOne(where: WhereCondition<User>): Promise<User | null> {
    const rows: User[] = await db.query(sql`
      SELECT "id", "username", "createdAt", "fullName" FROM "user"
      WHERE "username" = ${where.username ?? null}
      LIMIT 2`);
    if (rows.length > 1) {
      throw new Error(`more than one user is named ${where.username}`);
    }
    return rows[0] ?? null;
  },
});
