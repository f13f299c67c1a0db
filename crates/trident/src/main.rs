fn main() {
    println!("trident");
}
