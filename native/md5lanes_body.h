/* One MD5 engine over LANES buffers at once, included by md5lanes.c once per vector width.
 * Each lane hashes its own buffer; a lane whose buffer is done takes the next one, so buffers
 * of different lengths keep every lane busy until the last ones. */

typedef uint32_t VEC __attribute__((vector_size(LANES * 4)));

#define ROTL(x, s) (((x) << (s)) | ((x) >> (32 - (s))))
/* a + k + m does not wait for the previous step: the empty asm keeps the compiler from
 * re-associating it into the chain (f, +a, +k+m, rotate, +b) that makes a step 6 cycles. */
#define STEP(f, a, b, c, d, k, m, s)                                                         \
    do {                                                                                     \
        VEC early = a + (k) + (m);                                                           \
        __asm__("" : "+v"(early));                                                           \
        a = b + ROTL((f) + early, s);                                                        \
    } while (0)
#define F1(b, c, d) ((d) ^ ((b) & ((c) ^ (d))))
#define F2(b, c, d) ((c) ^ ((d) & ((b) ^ (c))))
#define F3(b, c, d) ((b) ^ (c) ^ (d))
#define F4(b, c, d) ((c) ^ ((b) | ~(d)))

__attribute__((target(TARGET))) static void
ENGINE(size_t count, const struct job *jobs, uint8_t *digests)
{
    struct lane lanes[LANES];
    uint32_t state[4][LANES] __attribute__((aligned(64)));
    uint32_t active[LANES] __attribute__((aligned(64)));
    static const uint8_t idle_block[64];
    size_t next = 0, busy = 0;
    VEC KV[64];
    for (int i = 0; i < 64; i++)
        KV[i] = (VEC){0} + K[i];

    for (int l = 0; l < LANES; l++) {
        active[l] = 0;
        if (next < count) {
            lane_init(&lanes[l], &jobs[next], next, &state[0][0], LANES, l);
            active[l] = 0xffffffffu;
            next++;
            busy++;
        }
    }
    while (busy) {
        const uint8_t *blocks[LANES] __attribute__((aligned(64)));
        for (int l = 0; l < LANES; l++)
            blocks[l] = active[l] ? lane_block(&lanes[l]) : idle_block;
        VEC words[16];
        GATHER(words, blocks);
        VEC a = *(VEC *)state[0], b = *(VEC *)state[1], c = *(VEC *)state[2],
            d = *(VEC *)state[3];
        const VEC a0 = a, b0 = b, c0 = c, d0 = d, on = *(VEC *)active;
#define M(i) (words[i])
        STEP(F1(b, c, d), a, b, c, d, KV[0], M(0), 7);
        STEP(F1(a, b, c), d, a, b, c, KV[1], M(1), 12);
        STEP(F1(d, a, b), c, d, a, b, KV[2], M(2), 17);
        STEP(F1(c, d, a), b, c, d, a, KV[3], M(3), 22);
        STEP(F1(b, c, d), a, b, c, d, KV[4], M(4), 7);
        STEP(F1(a, b, c), d, a, b, c, KV[5], M(5), 12);
        STEP(F1(d, a, b), c, d, a, b, KV[6], M(6), 17);
        STEP(F1(c, d, a), b, c, d, a, KV[7], M(7), 22);
        STEP(F1(b, c, d), a, b, c, d, KV[8], M(8), 7);
        STEP(F1(a, b, c), d, a, b, c, KV[9], M(9), 12);
        STEP(F1(d, a, b), c, d, a, b, KV[10], M(10), 17);
        STEP(F1(c, d, a), b, c, d, a, KV[11], M(11), 22);
        STEP(F1(b, c, d), a, b, c, d, KV[12], M(12), 7);
        STEP(F1(a, b, c), d, a, b, c, KV[13], M(13), 12);
        STEP(F1(d, a, b), c, d, a, b, KV[14], M(14), 17);
        STEP(F1(c, d, a), b, c, d, a, KV[15], M(15), 22);

        STEP(F2(b, c, d), a, b, c, d, KV[16], M(1), 5);
        STEP(F2(a, b, c), d, a, b, c, KV[17], M(6), 9);
        STEP(F2(d, a, b), c, d, a, b, KV[18], M(11), 14);
        STEP(F2(c, d, a), b, c, d, a, KV[19], M(0), 20);
        STEP(F2(b, c, d), a, b, c, d, KV[20], M(5), 5);
        STEP(F2(a, b, c), d, a, b, c, KV[21], M(10), 9);
        STEP(F2(d, a, b), c, d, a, b, KV[22], M(15), 14);
        STEP(F2(c, d, a), b, c, d, a, KV[23], M(4), 20);
        STEP(F2(b, c, d), a, b, c, d, KV[24], M(9), 5);
        STEP(F2(a, b, c), d, a, b, c, KV[25], M(14), 9);
        STEP(F2(d, a, b), c, d, a, b, KV[26], M(3), 14);
        STEP(F2(c, d, a), b, c, d, a, KV[27], M(8), 20);
        STEP(F2(b, c, d), a, b, c, d, KV[28], M(13), 5);
        STEP(F2(a, b, c), d, a, b, c, KV[29], M(2), 9);
        STEP(F2(d, a, b), c, d, a, b, KV[30], M(7), 14);
        STEP(F2(c, d, a), b, c, d, a, KV[31], M(12), 20);

        STEP(F3(b, c, d), a, b, c, d, KV[32], M(5), 4);
        STEP(F3(a, b, c), d, a, b, c, KV[33], M(8), 11);
        STEP(F3(d, a, b), c, d, a, b, KV[34], M(11), 16);
        STEP(F3(c, d, a), b, c, d, a, KV[35], M(14), 23);
        STEP(F3(b, c, d), a, b, c, d, KV[36], M(1), 4);
        STEP(F3(a, b, c), d, a, b, c, KV[37], M(4), 11);
        STEP(F3(d, a, b), c, d, a, b, KV[38], M(7), 16);
        STEP(F3(c, d, a), b, c, d, a, KV[39], M(10), 23);
        STEP(F3(b, c, d), a, b, c, d, KV[40], M(13), 4);
        STEP(F3(a, b, c), d, a, b, c, KV[41], M(0), 11);
        STEP(F3(d, a, b), c, d, a, b, KV[42], M(3), 16);
        STEP(F3(c, d, a), b, c, d, a, KV[43], M(6), 23);
        STEP(F3(b, c, d), a, b, c, d, KV[44], M(9), 4);
        STEP(F3(a, b, c), d, a, b, c, KV[45], M(12), 11);
        STEP(F3(d, a, b), c, d, a, b, KV[46], M(15), 16);
        STEP(F3(c, d, a), b, c, d, a, KV[47], M(2), 23);

        STEP(F4(b, c, d), a, b, c, d, KV[48], M(0), 6);
        STEP(F4(a, b, c), d, a, b, c, KV[49], M(7), 10);
        STEP(F4(d, a, b), c, d, a, b, KV[50], M(14), 15);
        STEP(F4(c, d, a), b, c, d, a, KV[51], M(5), 21);
        STEP(F4(b, c, d), a, b, c, d, KV[52], M(12), 6);
        STEP(F4(a, b, c), d, a, b, c, KV[53], M(3), 10);
        STEP(F4(d, a, b), c, d, a, b, KV[54], M(10), 15);
        STEP(F4(c, d, a), b, c, d, a, KV[55], M(1), 21);
        STEP(F4(b, c, d), a, b, c, d, KV[56], M(8), 6);
        STEP(F4(a, b, c), d, a, b, c, KV[57], M(15), 10);
        STEP(F4(d, a, b), c, d, a, b, KV[58], M(6), 15);
        STEP(F4(c, d, a), b, c, d, a, KV[59], M(13), 21);
        STEP(F4(b, c, d), a, b, c, d, KV[60], M(4), 6);
        STEP(F4(a, b, c), d, a, b, c, KV[61], M(11), 10);
        STEP(F4(d, a, b), c, d, a, b, KV[62], M(2), 15);
        STEP(F4(c, d, a), b, c, d, a, KV[63], M(9), 21);
#undef M
        /* idle lanes keep their state: only active ones take the block's sums */
        *(VEC *)state[0] = ((a0 + a) & on) | (a0 & ~on);
        *(VEC *)state[1] = ((b0 + b) & on) | (b0 & ~on);
        *(VEC *)state[2] = ((c0 + c) & on) | (c0 & ~on);
        *(VEC *)state[3] = ((d0 + d) & on) | (d0 & ~on);

        for (int l = 0; l < LANES; l++) {
            if (!active[l] || !lane_advance(&lanes[l]))
                continue;
            lane_write(&lanes[l], &state[0][0], LANES, l, digests);
            if (next < count) {
                lane_init(&lanes[l], &jobs[next], next, &state[0][0], LANES, l);
                next++;
            } else {
                active[l] = 0;
                busy--;
            }
        }
    }
}

#undef ROTL
#undef STEP
#undef F1
#undef F2
#undef F3
#undef F4
